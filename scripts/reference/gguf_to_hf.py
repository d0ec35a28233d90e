#!/usr/bin/env python3
"""Writes a Hugging Face decoder checkpoint directory (config.json,
safetensors weights, the tokenizer and its configs) from a GGUF file, so the
safetensors loaders can be tested on the same models as the GGUF ones.

    $MODELSHIP_CACHE/venv/bin/python scripts/reference/gguf_to_hf.py GGUF OUT_DIR [--dtype f32|bf16|f16] [--shards N]

Every tensor is dequantized to f32 by llama.cpp's own reader (PyPI `gguf`),
renamed to the Transformers name (the inverse of gguf/tensor_mapping.py) and
undone where llama.cpp's converter changed it: the q/k row order of llama
files (for its interleaved rope) and the +1 of Gemma's norms. Architectures:
llama (and Mistral files), qwen2, qwen3, phi3, gemma2, gemma3; tokenizers:
byte-level BPE ("gpt2") as tokenizer.json, SentencePiece ("llama") as
tokenizer.model (every token a piece, with its score and type). The directory is written as OUT_DIR.partial and
renamed, so OUT_DIR exists only complete.
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import sys

import numpy as np

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# GGUF architecture -> (Transformers class, model_type)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
GEMMA = ("gemma2", "gemma3")

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# blk.N.{gguf}.{weight,bias} -> model.layers.N.{hf}.{weight,bias}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma normalizes before and after both the attention and the MLP.
GEMMA_LAYER_NAMES = {
    **LAYER_NAMES,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
REFUSED_TENSORS = {
    "rope_factors_long.weight": "Phi-3 LongRoPE",
    "rope_factors_short.weight": "Phi-3 LongRoPE",
}

# llama.cpp's token types (gguf.TokenType)
UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 2, 3, 4, 5

# The split regexes of llama.cpp's BPE pre-tokenizers (src/llama-vocab.cpp),
# as the models' own tokenizer.json files write them.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

DTYPES = {  # --dtype -> (safetensors dtype, bytes per value, torch_dtype)
    "f32": ("F32", 4, "float32"),
    "bf16": ("BF16", 2, "bfloat16"),
    "f16": ("F16", 2, "float16"),
}


def fail(message):
    sys.exit(f"gguf_to_hf: {message}")


def field(reader, key, default=None, required=False):
    f = reader.fields.get(key)
    if f is None:
        if required:
            fail(f"the file has no {key}")
        return default
    return f.contents()


def hf_name(arch, gguf_name):
    if gguf_name in REFUSED_TENSORS:
        fail(f"{gguf_name}: per-frequency rope factors ({REFUSED_TENSORS[gguf_name]}) are not supported")
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    names = GEMMA_LAYER_NAMES if arch in GEMMA else LAYER_NAMES
    if m is None or m.group(2) not in names:
        fail(f"no Transformers name for tensor {gguf_name} of a {arch} file")
    layer, part, kind = m.groups()
    if arch == "phi3" and part == "ffn_up":
        part_name = "mlp.gate_up_proj"  # gate and up rows in one matrix
    else:
        part_name = names[part]
    return f"model.layers.{layer}.{part_name}.{kind}"


def unpermute_rope(w, n_head):
    """The inverse of llama.cpp's q/k row order for interleaved rope
    (convert_hf_to_gguf.py's LlamaModel.permute, which is
    w.reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2))."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized(t):
    """The tensor as f32, rows first: numpy shape = reversed GGUF shape."""
    shape = tuple(int(n) for n in reversed(t.shape))
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    if values.size != int(np.prod(shape)):
        fail(f"{t.name}: dequantized {values.size} values for shape {shape}")
    return values.reshape(shape)


def llama3_rope_factors(base, dim, scaling):
    """Llama 3's factor per rotated pair, from config.json's `rope_scaling`, as
    llama.cpp's converter computes its `rope_freqs.weight` (here in float64,
    rounded to float32 once, as modelship does)."""
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for i in range(dim // 2):
        freq = 1.0 / float(base) ** (2 * i / dim)
        wavelen = 2.0 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def tensor_plan(reader, arch, hp):
    """(HF name, GGUF tensor, shape, transform) for every tensor, in writing
    order: embeddings, layers in order, final norm, output. Llama 3's rope
    factors are config.json's `rope_scaling`, not a tensor."""
    plan = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_name(arch, t.name)
        shape = tuple(int(n) for n in reversed(t.shape))
        transform = None
        if arch == "llama" and re.search(r"\.attn_[qk]\.", t.name):
            n_head = hp["heads"] if ".attn_q." in t.name else hp["kv_heads"]
            if shape[0] % (2 * n_head):
                fail(f"{t.name}: {shape[0]} rows do not split into {n_head} heads of even size")
            transform = lambda w, n=n_head: unpermute_rope(w, n)
        elif arch in GEMMA and t.name.endswith("norm.weight"):
            transform = lambda w: w - np.float32(1.0)  # llama.cpp stores Gemma's 1 + w
        plan.append((name, t, shape, transform))
    if arch == "phi3" and any(".ffn_gate." in t.name or ".attn_q." in t.name for _, t, _, _ in plan):
        fail("phi3 file with separate attn_q/ffn_gate tensors: only fused attn_qkv and ffn_up are written")

    def order(entry):
        name = entry[0]
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            return (1, int(m.group(1)), name)
        return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3), 0, name)
    return sorted(plan, key=order)


def hyperparameters(reader, arch):
    a = lambda key, **kw: field(reader, f"{arch}.{key}", **kw)
    hidden = int(a("embedding_length", required=True))
    heads = int(a("attention.head_count", required=True))
    kv_heads = a("attention.head_count_kv", default=heads)
    ff = a("feed_forward_length", required=True)
    if isinstance(kv_heads, list) or isinstance(ff, list):
        fail("per-layer head counts or MLP widths are not supported")
    head_dim = int(a("attention.key_length", default=hidden // heads))
    if a("attention.value_length", default=head_dim) != head_dim:
        fail("keys and values of different widths are not supported")
    return dict(hidden=hidden, heads=heads, kv_heads=int(kv_heads), ff=int(ff), head_dim=head_dim,
                layers=int(a("block_count", required=True)))


def rope_scaling(reader, arch):
    kind = field(reader, f"{arch}.rope.scaling.type", default="none")
    if kind == "none":
        return None
    if kind != "linear":
        fail(f"rope scaling {kind!r} is not supported (only linear)")
    factor = float(field(reader, f"{arch}.rope.scaling.factor", required=True))
    return {"type": "linear", "rope_type": "linear", "factor": factor}


def model_config(reader, arch, hp, vocab_size, tied, torch_dtype):
    a = lambda key, **kw: field(reader, f"{arch}.{key}", **kw)
    cls, model_type = ARCHITECTURES[arch]
    has_bias = any(t.name.endswith(".attn_q.bias") for t in reader.tensors)
    config = {
        "_name_or_path": field(reader, "general.name", default=""),
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": hp["hidden"],
        "intermediate_size": hp["ff"],
        "num_hidden_layers": hp["layers"],
        "num_attention_heads": hp["heads"],
        "num_key_value_heads": hp["kv_heads"],
        "head_dim": hp["head_dim"],
        "max_position_embeddings": int(a("context_length", required=True)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", required=True)),
        "rope_theta": float(a("rope.freq_base", default=10000.0)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "torch_dtype": torch_dtype,
    }
    for key in ("bos_token_id", "eos_token_id"):
        value = field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[key] = int(value)
    scaling = rope_scaling(reader, arch)
    if scaling:
        config["rope_scaling"] = scaling
    rotary = a("rope.dimension_count", default=hp["head_dim"])
    if rotary != hp["head_dim"]:
        if arch != "phi3":
            fail(f"rope over {rotary} of {hp['head_dim']} head dimensions is only written for phi3")
        config["partial_rotary_factor"] = rotary / hp["head_dim"]

    if arch in GEMMA:
        # What llama.cpp runs (src/models/gemma2.cpp, gemma3.cpp), defaults included.
        config["hidden_act"] = config["hidden_activation"] = "gelu_pytorch_tanh"
        big = hp["layers"] == (46 if arch == "gemma2" else 62)  # the 27B models
        config["query_pre_attn_scalar"] = hp["hidden"] // hp["heads"] if big else hp["head_dim"]
        if arch == "gemma2":
            config["sliding_window"] = int(a("attention.sliding_window", default=4096))
            config["attn_logit_softcapping"] = float(a("attn_logit_softcapping", default=50.0))
            config["final_logit_softcapping"] = float(a("final_logit_softcapping", default=30.0))
            if a("rope.freq_base_swa", default=config["rope_theta"]) != config["rope_theta"]:
                fail("gemma2 with a separate rope base for its sliding layers is not supported")
            pattern = a("attention.sliding_window_pattern", default=2)
        else:
            config["sliding_window"] = int(a("attention.sliding_window", required=True))
            config["attn_logit_softcapping"] = None
            config["final_logit_softcapping"] = a("final_logit_softcapping")
            config["rope_local_base_freq"] = float(a("rope.freq_base_swa", default=10000.0))
            pattern = a("attention.sliding_window_pattern", default=6)
        if isinstance(pattern, list):  # one flag per layer
            sliding = [bool(s) for s in pattern]
        else:  # n - 1 sliding layers, then a global one
            sliding = [i % pattern < pattern - 1 for i in range(hp["layers"])]
            if arch == "gemma3":
                config["sliding_window_pattern"] = pattern
        config["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    else:
        config["hidden_act"] = "silu"
    if arch == "llama":
        config["attention_bias"] = has_bias
        config["mlp_bias"] = False
    if arch in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
    if arch == "qwen3":
        config["attention_bias"] = has_bias
    if arch == "phi3":
        config["sliding_window"] = None  # llama.cpp runs Phi-3 without its window
        config["original_max_position_embeddings"] = int(
            a("rope.scaling.original_context_length", default=config["max_position_embeddings"]))
    return config


def pre_tokenizer(pre):
    if pre == "smollm":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in ("qwen2", "llama-bpe"):
        split = QWEN2_SPLIT if pre == "qwen2" else LLAMA3_SPLIT
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    # A missing pre-tokenizer is llama.cpp's "default", whose splits are not GPT-2's.
    fail(f"BPE pre-tokenizer {pre!r} is not supported (smollm, qwen2, llama-bpe, gpt2)")


def protobuf_field(number, wire, payload):
    """One protobuf field: its key, then a varint, 4 bytes or length-delimited bytes."""
    def varint(v):
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + payload
    return key + varint(len(payload)) + payload


def sentencepiece_model(reader):
    """tokenizer.model (SentencePiece's ModelProto) holding every GGUF token as
    a piece with its score and type: SentencePiece numbers its types as
    llama.cpp does. A BPE model without a dummy prefix (Gemma's)."""
    tokens = field(reader, "tokenizer.ggml.tokens", required=True)
    scores = field(reader, "tokenizer.ggml.scores", required=True)
    types = field(reader, "tokenizer.ggml.token_type", required=True)
    out = bytearray()
    for t, score, kind in zip(tokens, scores, types):
        piece = (protobuf_field(1, 2, t.encode("utf-8")) + protobuf_field(2, 5, struct.pack("<f", score))
                 + protobuf_field(3, 0, int(kind)))
        out += protobuf_field(1, 2, piece)
    out += protobuf_field(2, 2, protobuf_field(3, 0, 2))  # trainer_spec.model_type = BPE
    add_prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", default=True))
    out += protobuf_field(3, 2, protobuf_field(1, 2, b"identity") + protobuf_field(3, 0, int(add_prefix)))
    return bytes(out)


def sentencepiece_files(reader, context_length):
    """tokenizer.model and tokenizer_config.json (added tokens: the control
    and user-defined ones) for a SentencePiece (`llama`) vocabulary;
    transformers builds its fast tokenizer from tokenizer.model."""
    tokens = field(reader, "tokenizer.ggml.tokens", required=True)
    types = field(reader, "tokenizer.ggml.token_type", required=True)
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": kind == CONTROL}
             for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (CONTROL, USER_DEFINED)}

    def token(key):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]
    config = {
        "add_bos_token": field(reader, "tokenizer.ggml.add_bos_token"),
        "add_eos_token": field(reader, "tokenizer.ggml.add_eos_token"),
        "add_sep_token": field(reader, "tokenizer.ggml.add_sep_token"),
        "added_tokens_decoder": added,
        "bos_token": token("bos"),
        "chat_template": field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("eos"),
        "model_max_length": context_length,
        "pad_token": token("padding"),
        "tokenizer_class": "GemmaTokenizer" if field(reader, "general.architecture") in GEMMA else "LlamaTokenizer",
        "unk_token": token("unknown"),
    }
    return sentencepiece_model(reader), {k: v for k, v in config.items() if v is not None}


def tokenizer_files(reader, context_length):
    """tokenizer.json (a tokenizers.Tokenizer) and tokenizer_config.json."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        fail(f"tokenizer {model!r} is not supported: only byte-level BPE (tokenizer.ggml.model = gpt2)")
    tokens = field(reader, "tokenizer.ggml.tokens", required=True)
    types = field(reader, "tokenizer.ggml.token_type", required=True)
    pre = field(reader, "tokenizer.ggml.pre")
    used = [(i, t) for i, (t, kind) in enumerate(zip(tokens, types)) if kind != UNUSED]
    vocab = {t: i for i, t in used}
    if len(vocab) != len(used):
        fail("the vocabulary repeats a token")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges", required=True)]
    # llama.cpp looks Llama 3's words up whole before merging.
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre == "llama-bpe"))
    tokenizer.pre_tokenizer = pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()

    added = {}
    for i, t in used:
        if types[i] in (CONTROL, UNKNOWN, USER_DEFINED):
            special = types[i] != USER_DEFINED
            token = AddedToken(t, special=special, normalized=False)
            (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([token])
            added[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": special}

    def token(key):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]
    bos = token("bos")
    # llama.cpp's default for Llama 3 vocabularies is to add BOS.
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", default=pre == "llama-bpe"))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if add_bos and bos is not None:
        bos_id = vocab[bos]
        tokenizer.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])])
    else:
        tokenizer.post_processor = byte_level

    config = {
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": bos,
        "chat_template": field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": token("eos"),
        "model_max_length": context_length,
        "pad_token": token("padding"),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": token("unknown"),
    }
    return tokenizer, {k: v for k, v in config.items() if v is not None}


def encode(values, dtype):
    """Little-endian bytes of f32 values in the checkpoint's dtype."""
    values = np.ascontiguousarray(values, dtype="<f4")
    if dtype == "f32":
        return values.tobytes()
    if dtype == "f16":
        return values.astype("<f2").tobytes()
    # bf16: the top half of the f32 bits, rounded to nearest even; NaN stays NaN.
    bits = values.view("<u4")
    nan = np.isnan(values)
    rounded = (np.where(nan, 0, bits) + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = np.where(nan, (bits >> 16) | 0x0040, rounded)
    return rounded.astype("<u2").tobytes()


def tensor_bytes(shape, dtype):
    return int(np.prod(shape)) * DTYPES[dtype][1]


def write_safetensors(path, entries, dtype):
    header, offset = {}, 0
    for name, _, shape, _ in entries:
        n = tensor_bytes(shape, dtype)
        header[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, t, shape, transform in entries:
            values = dequantized(t)
            if transform is not None:
                values = transform(values)
            f.write(encode(values, dtype))


def shard(plan, n, dtype):
    """n runs of consecutive tensors of about equal bytes: each tensor goes to
    the shard its middle byte falls in."""
    total = sum(tensor_bytes(shape, dtype) for _, _, shape, _ in plan)
    shards, start = [[] for _ in range(n)], 0
    for entry in plan:
        size = tensor_bytes(entry[2], dtype)
        shards[min(n - 1, (start + size // 2) * n // total)].append(entry)
        start += size
    if not all(shards):
        fail(f"{len(plan)} tensors do not fill {n} shards")
    return shards, total


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert(gguf_path, out_dir, dtype, n_shards, rope_scaling_arg=None):
    reader = gguf.GGUFReader(gguf_path)
    arch = field(reader, "general.architecture", required=True)
    if arch not in ARCHITECTURES:
        fail(f"architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)})")
    hp = hyperparameters(reader, arch)
    names = {t.name: t for t in reader.tensors}
    vocab_size = int(names["token_embd.weight"].shape[1])
    tied = "output.weight" not in names
    config = model_config(reader, arch, hp, vocab_size, tied, DTYPES[dtype][2])
    if "rope_freqs.weight" in names:
        # The factors are computed from config.json: only parameters that
        # give exactly the file's factors are written.
        if rope_scaling_arg is None or arch != "llama":
            fail("rope_freqs.weight: Llama 3 rope factors need --rope-scaling (a llama file)")
        scaling = {"rope_type": "llama3", **json.loads(rope_scaling_arg)}
        ours = llama3_rope_factors(config["rope_theta"], hp["head_dim"], scaling)
        theirs = np.asarray(names["rope_freqs.weight"].data, dtype=np.float32).reshape(-1)
        if not np.array_equal(ours, theirs):
            fail(f"rope_freqs.weight {theirs.tolist()} is not --rope-scaling's {ours.tolist()}")
        config["rope_scaling"] = scaling
    if field(reader, "tokenizer.ggml.model") == "llama":
        tokenizer, tokenizer_config = sentencepiece_files(reader, config["max_position_embeddings"])
    else:
        tokenizer, tokenizer_config = tokenizer_files(reader, config["max_position_embeddings"])
    plan = tensor_plan(reader, arch, hp)
    shards, total = shard(plan, n_shards, dtype)

    partial, old = out_dir + ".partial", out_dir + ".old"
    for stale in (partial, old):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(partial)
    try:
        write_json(f"{partial}/config.json", config)
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
        write_json(f"{partial}/generation_config.json", generation)
        if isinstance(tokenizer, bytes):
            with open(f"{partial}/tokenizer.model", "wb") as f:
                f.write(tokenizer)
        else:
            tokenizer.save(f"{partial}/tokenizer.json")
        write_json(f"{partial}/tokenizer_config.json", tokenizer_config)
        if n_shards == 1:
            write_safetensors(f"{partial}/model.safetensors", plan, dtype)
        else:
            weight_map = {}
            for k, entries in enumerate(shards, 1):
                file = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
                write_safetensors(f"{partial}/{file}", entries, dtype)
                weight_map.update({name: file for name, _, _, _ in entries})
            write_json(f"{partial}/model.safetensors.index.json",
                       {"metadata": {"total_size": total}, "weight_map": weight_map})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(partial, out_dir)
    shutil.rmtree(old, ignore_errors=True)

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=DTYPES, default="f32")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--rope-scaling", help="JSON of config.json's llama3 `rope_scaling` that gives the "
                   "file's rope_freqs.weight (checked)")
    args = p.parse_args()
    if args.shards < 1:
        fail("--shards must be at least 1")
    convert(args.gguf, args.out_dir.rstrip("/"), args.dtype, args.shards, args.rope_scaling)


if __name__ == "__main__":
    main()
