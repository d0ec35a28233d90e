#!/usr/bin/env python3
"""Small random-weight GGUF decoders for the architectures no package ships a
model of, written with PyPI `gguf` (llama.cpp's own writer), and llama.cpp's
greedy continuation of each (llama-cpp-python on the same file).

    $MODELSHIP_CACHE/venv/bin/python scripts/reference/tiny_decoders.py SMOLLM2.gguf OUTDIR

Writes OUTDIR/{name}.gguf and OUTDIR/reference.json (and two bad files,
bad_falcon.gguf and bad_shape.gguf, for the loaders' error messages): per model, the prompt's
token ids, llama.cpp's greedy tokens and, at each step teacher-forced along
them, its two best tokens with their logits. The vocabulary (and tokenizer
metadata) is SmolLM2's, copied from its GGUF, so prompts are real text.

  llama3   llama with Llama 3 rope scaling (`rope_freqs.weight`) and GQA
  mistral  llama with GQA and a 4-to-1 head ratio, Q4_0/Q5_0 matrices
  qwen3    per-head q/k RMS norms, key length != width / heads, no biases
  qwen2    QKV biases, separate output matrix
  gemma2   (1+w) norms as stored, pre/post norms, GELU, alternating sliding
           window, attention and final soft-capping, scaled embeddings

Phi-3 (fused `attn_qkv`, gate/up in `ffn_up`) is not among them: llama.cpp
0.3.36 refuses a phi3 file with this vocabulary ("error loading model
vocabulary: unordered_map::at"). Instead OUTDIR/phi3.gguf comes with
phi3_split.gguf, a qwen2 file holding the same rows as separate tensors.
"""
import json
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from llama_cpp import Llama

from gguf_to_hf import llama3_rope_factors

# config.json's `rope_scaling` the llama3 file's factors come from (in
# reference.json too, for writing it as a checkpoint). The original context
# puts two of the 16 pairs between the kept and the divided ones.
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32768}

WIDTH, FF, LAYERS, CTX = 128, 256, 3, 1024
PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time",
    "1, 2, 3, 4,",
    "Water boils at",
    # ~770 tokens: past the engine's sliding-window cache (512 rows for
    # gemma2's window of 8), so its oldest rows are dropped mid-prompt.
    "A story: " + "the quick brown fox jumps over the lazy dog; " * 70,
]
N_TOKENS = 16


def copy_tokenizer(w, src, extra=()):
    """SmolLM2's vocabulary, with `extra` control tokens appended."""
    r = gguf.GGUFReader(src)
    f = lambda k: r.fields[k].contents()
    w.add_tokenizer_model(f("tokenizer.ggml.model"))
    w.add_tokenizer_pre(f("tokenizer.ggml.pre"))
    w.add_token_list(list(f("tokenizer.ggml.tokens")) + list(extra))
    w.add_token_types(list(f("tokenizer.ggml.token_type")) + [3] * len(extra))  # control
    w.add_token_merges(f("tokenizer.ggml.merges"))
    w.add_bos_token_id(f("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(f("tokenizer.ggml.eos_token_id"))
    w.add_add_bos_token(False)
    return len(f("tokenizer.ggml.tokens")) + len(extra)


def tensor(w, name, data, qtype=Q.F32):
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def write(path, name, arch, smollm, rng, heads, kv_heads, head_dim, matrix_type=Q.Q8_0, **features):
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{name}")
    vocab = copy_tokenizer(w, smollm, features.get("extra_tokens", ()))
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(WIDTH)
    w.add_feed_forward_length(FF)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(features.get("rope_base", 10000.0))
    if "window" in features:
        w.add_sliding_window(features["window"])
    if "attn_softcap" in features:
        w.add_attn_logit_softcapping(features["attn_softcap"])
        w.add_final_logit_softcapping(features["final_softcap"])
    g = lambda *shape, s=1.0: rng.standard_normal(shape).astype(np.float32) * s
    norm = lambda n: 1.0 + 0.1 * g(n)
    m = lambda rows, cols: g(rows, cols, s=1.0 / np.sqrt(cols))
    tensor(w, "token_embd.weight", g(vocab, WIDTH, s=features.get("embed_std", 1.0)), Q.Q8_0)
    tensor(w, "output_norm.weight", norm(WIDTH))
    if features.get("output"):
        # Scaled up so that the logits are peaked: few near-ties to hide behind.
        tensor(w, "output.weight", m(vocab, WIDTH) * 20.0, Q.Q8_0)
    if features.get("rope_freqs"):
        # Llama 3's factors as its converter computes them from config.json:
        # 1 for high frequencies, 8 for low ones, blended in between.
        base = features.get("rope_base", 10000.0)
        tensor(w, "rope_freqs.weight", llama3_rope_factors(base, head_dim, LLAMA3_SCALING))
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
    for i in range(LAYERS):
        b = f"blk.{i}."
        tensor(w, b + "attn_norm.weight", norm(WIDTH))
        if features.get("fused"):
            qkv, up = m(q_rows + 2 * kv_rows, WIDTH), m(2 * FF, WIDTH)
            if features.get("split"):
                # The same rows as separate tensors, for a twin file.
                tensor(w, b + "attn_q.weight", qkv[:q_rows], matrix_type)
                tensor(w, b + "attn_k.weight", qkv[q_rows:q_rows + kv_rows], matrix_type)
                tensor(w, b + "attn_v.weight", qkv[q_rows + kv_rows:], matrix_type)
                tensor(w, b + "ffn_gate.weight", up[:FF], matrix_type)
                tensor(w, b + "ffn_up.weight", up[FF:], matrix_type)
            else:
                tensor(w, b + "attn_qkv.weight", qkv, matrix_type)
                tensor(w, b + "ffn_up.weight", up, matrix_type)
        else:
            bad = 32 if features.get("wrong_q_rows") else 0
            tensor(w, b + "attn_q.weight", m(q_rows + bad, WIDTH), matrix_type)
            tensor(w, b + "attn_k.weight", m(kv_rows, WIDTH), matrix_type)
            tensor(w, b + "attn_v.weight", m(kv_rows, WIDTH), features.get("v_type", matrix_type))
            tensor(w, b + "ffn_gate.weight", m(FF, WIDTH), matrix_type)
            tensor(w, b + "ffn_up.weight", m(FF, WIDTH), matrix_type)
        if features.get("bias"):
            tensor(w, b + "attn_q.bias", g(q_rows, s=0.5))
            tensor(w, b + "attn_k.bias", g(kv_rows, s=0.5))
            tensor(w, b + "attn_v.bias", g(kv_rows, s=0.5))
        if features.get("qk_norm"):
            tensor(w, b + "attn_q_norm.weight", norm(head_dim))
            tensor(w, b + "attn_k_norm.weight", norm(head_dim))
        tensor(w, b + "attn_output.weight", m(WIDTH, q_rows), matrix_type)
        tensor(w, b + "ffn_norm.weight", norm(WIDTH))
        tensor(w, b + "ffn_down.weight", m(WIDTH, FF), Q.Q8_0)
        if features.get("post_norms"):
            tensor(w, b + "post_attention_norm.weight", norm(WIDTH))
            tensor(w, b + "post_ffw_norm.weight", norm(WIDTH))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


MODELS = {
    "llama3": dict(arch="llama", heads=4, kv_heads=2, head_dim=32, rope_freqs=True, output=True, rope_base=500000.0),
    "mistral": dict(arch="llama", heads=8, kv_heads=2, head_dim=16, output=True, matrix_type=Q.Q4_0, v_type=Q.Q5_0),
    "qwen3": dict(arch="qwen3", heads=4, kv_heads=2, head_dim=64, qk_norm=True, output=True, rope_base=1000000.0),
    "qwen2": dict(arch="qwen2", heads=4, kv_heads=2, head_dim=32, bias=True, output=True, matrix_type=Q.Q5_0),
    "gemma2": dict(arch="gemma2", heads=4, kv_heads=2, head_dim=64, post_norms=True, window=8,
                   # Gemma scales embeddings by √width: keep them unit-sized.
                   embed_std=1.0 / np.sqrt(WIDTH),
                   attn_softcap=50.0, final_softcap=30.0),
}


def reference(path):
    llm = Llama(model_path=path, n_ctx=CTX, n_threads=2, seed=0, verbose=False, logits_all=True)
    out = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        generated = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            if len(generated) == N_TOKENS:
                break
            generated.append(tok)
        llm.reset()
        top2 = []
        for step in [ids] + [[t] for t in generated[:-1]]:
            llm.eval(step)
            row = np.array(llm.scores[llm.n_tokens - 1])
            a, b = np.argsort(-row)[:2]
            top2.append([int(a), float(row[a]), int(b), float(row[b])])
        out.append({"prompt": prompt, "prompt_tokens": ids, "tokens": generated, "top2": top2})
    return out


def main(smollm, outdir):
    result = {}
    for k, (name, spec) in enumerate(MODELS.items()):
        spec = dict(spec)
        arch = spec.pop("arch")
        path = f"{outdir}/{name}.gguf"
        write(path, name, arch, smollm, np.random.default_rng(k), **spec)
        result[name] = {"architecture": arch, "completions": reference(path)}
        if spec.get("rope_freqs"):
            result[name]["rope_scaling"] = LLAMA3_SCALING
    with open(f"{outdir}/reference.json", "w") as f:
        json.dump(result, f)
    # Phi-3 has no llama.cpp reference here (see above): its fused file and
    # a qwen2 twin holding the same rows as separate tensors (no biases,
    # the same rope and MLP) must give the same logits in our engine.
    phi3 = dict(heads=4, kv_heads=4, head_dim=32, fused=True, output=True)
    write(f"{outdir}/phi3.gguf", "phi3", "phi3", smollm, np.random.default_rng(99), **phi3)
    write(f"{outdir}/phi3_split.gguf", "phi3-split", "qwen2", smollm, np.random.default_rng(99), split=True, **phi3)
    # Bad input for the loaders' error messages: an architecture the engine
    # does not run, and a file whose attn_q disagrees with its head count.
    write(f"{outdir}/bad_falcon.gguf", "falcon", "falcon", smollm, np.random.default_rng(0),
          heads=4, kv_heads=2, head_dim=32)
    write(f"{outdir}/bad_shape.gguf", "qwen2", "qwen2", smollm, np.random.default_rng(0),
          heads=4, kv_heads=2, head_dim=32, wrong_q_rows=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
