#!/usr/bin/env python3
"""Checks modelship's GGUF files against llama.cpp's own tools (PyPI `gguf`
and `llama-cpp-python`). Prints JSON.

  gguf_check.py blocks REF_F32.gguf OUT.gguf
      Every tensor of OUT against the same tensor of REF (an f32 file):
      q8_0/q4_0/q4_1 re-quantized by gguf.quants.quantize must be the same
      bytes; every quantized tensor is dequantized by gguf.quants.dequantize
      and its relative RMS error to REF reported.
  gguf_check.py same ORIGINAL.gguf OUT.gguf
      OUT as llama.cpp's converter would write ORIGINAL back from a
      checkpoint of its dequantized weights: the same tensor names, every
      OUT tensor equal to gguf.quants.dequantize of ORIGINAL's, and the same
      value for every metadata key both hold (descriptive `general.*` keys
      aside). Reports the tensors and keys that differ, and the keys only
      ORIGINAL holds.
  gguf_check.py greedy MODEL.gguf N PROMPT...
      llama.cpp's greedy tokens and, per step, its two best (token, logit).
  gguf_check.py embed MODEL.gguf TEXT...
      llama.cpp's normalized embeddings (the file's pooling).
"""
import json
import sys

import numpy as np


def tensors(path):
    from gguf import GGUFReader
    return {t.name: t for t in GGUFReader(path).tensors}


def blocks(ref_path, out_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
    ref = tensors(ref_path)
    rows = []
    for name, t in tensors(out_path).items():
        if t.tensor_type in (Q.F32, Q.F16, Q.BF16):
            continue
        r = ref[name]
        assert r.tensor_type == Q.F32, f"{name}: reference is not f32"
        shape = tuple(int(d) for d in reversed(r.shape))
        x = np.asarray(r.data, dtype=np.float32).reshape(shape)
        raw = np.asarray(t.data, dtype=np.uint8).reshape(shape[0], -1)
        identical = None
        if t.tensor_type in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
            identical = bool(np.array_equal(quants.quantize(x, t.tensor_type), raw))
        y = quants.dequantize(raw, t.tensor_type).reshape(shape)
        rel = float(np.sqrt(np.mean((y - x) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30))
        rows.append({"name": name, "type": t.tensor_type.name, "identical": identical, "rel_rms": rel})
    return rows


def metadata(path):
    from gguf import GGUFReader, GGUFValueType as V
    out = {}
    for key, f in GGUFReader(path).fields.items():
        if key.startswith("GGUF."):
            continue
        kind = f.types[0]
        if kind == V.ARRAY and f.types[1] == V.STRING:
            out[key] = [bytes(f.parts[i]).decode() for i in f.data]
        elif kind == V.ARRAY:
            out[key] = [f.parts[i].tolist() for i in f.data]
        elif kind == V.STRING:
            out[key] = bytes(f.parts[-1]).decode()
        else:
            out[key] = f.parts[-1].tolist()
    return out


def same(original_path, out_path):
    from gguf import quants
    original, out = tensors(original_path), tensors(out_path)
    differing = []
    for name, t in out.items():
        if name not in original:
            differing.append(name)
            continue
        r = original[name]
        want = quants.dequantize(np.asarray(r.data), r.tensor_type).reshape(-1)
        got = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)
        if want.shape != got.shape or not np.array_equal(want, got):
            differing.append(name)
    a, b = metadata(original_path), metadata(out_path)
    descriptive = lambda k: k.startswith("general.") and k not in ("general.architecture",)
    return {
        "tensors": len(out),
        "missing_tensors": sorted(set(original) - set(out)),
        "differing_tensors": differing,
        "differing_keys": sorted(k for k in set(a) & set(b) if not descriptive(k) and a[k] != b[k]),
        "keys_only_in_original": sorted(k for k in set(a) - set(b) if not descriptive(k)),
    }


def greedy(path, n, prompts):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, seed=0, verbose=False, logits_all=True)
    out = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        tokens, top2 = [], []
        for _ in range(int(n)):
            row = np.array(llm.scores[llm.n_tokens - 1])
            a, b = np.argsort(-row)[:2]
            top2.append([int(a), float(row[a]), int(b), float(row[b])])
            tokens.append(int(a))
            llm.eval([int(a)])
        out.append({"prompt": prompt, "prompt_tokens": ids, "tokens": tokens, "top2": top2})
    return out


def embed(path, texts):
    from llama_cpp import Llama
    llm = Llama(model_path=path, embedding=True, n_ctx=512, n_threads=2, verbose=False)
    return [list(map(float, v)) for v in llm.embed(texts, normalize=True)]


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    result = {"blocks": lambda: blocks(*args),
              "same": lambda: same(*args),
              "greedy": lambda: greedy(args[0], args[1], args[2:]),
              "embed": lambda: embed(args[0], args[1:])}[cmd]()
    print(json.dumps(result))
