#!/usr/bin/env python3
"""llama.cpp's perplexity, KL divergence and top-1 agreement, through
llama-cpp-python, computed as llama.cpp's `perplexity` tool computes them:
the text tokenized once (BOS first when the model adds one), cut into chunks
of CTX tokens (the first token of each replaced by BOS when the model adds
one), each chunk evaluated from an empty cache, and the tokens of its second
half scored with log-softmax in double precision.

    $MODELSHIP_CACHE/venv/bin/python scripts/reference/llama_perplexity.py \
        --ctx 512 [--chunks N] --text FILE MODEL.gguf [REFERENCE.gguf]

Prints JSON: perplexity (and, with a reference, reference_perplexity, kld and
top1_agreement over the same positions).
"""
import argparse
import json

import numpy as np
from llama_cpp import Llama


def log_softmax(rows):
    rows = rows.astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    return rows - (np.log(np.exp(rows - m).sum(axis=1, keepdims=True)) + m)


def scored_log_probs(path, text, ctx, chunks):
    llm = Llama(model_path=path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=2,
                logits_all=True, verbose=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else False
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n = len(tokens) // ctx
    if chunks:
        n = min(n, chunks)
    out = []
    for i in range(n):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        first = ctx // 2
        logits = np.array(llm.scores[first:ctx - 1])
        out.append((log_softmax(logits), np.array(chunk[first + 1:ctx])))
    return out, len(tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--text", required=True)
    ap.add_argument("model")
    ap.add_argument("reference", nargs="?")
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8").read()
    model, n_tokens = scored_log_probs(a.model, text, a.ctx, a.chunks)
    nll = sum(-lp[np.arange(len(t)), t].sum() for lp, t in model)
    count = sum(len(t) for _, t in model)
    result = {"ctx": a.ctx, "chunks": len(model), "tokens": n_tokens, "tokens_scored": count,
              "perplexity": float(np.exp(nll / count))}
    if a.reference:
        ref, _ = scored_log_probs(a.reference, text, a.ctx, a.chunks)
        ref_nll = sum(-lp[np.arange(len(t)), t].sum() for lp, t in ref)
        kld = sum((np.exp(r) * (r - m)).sum() for (m, _), (r, _) in zip(model, ref))
        top1 = sum((m.argmax(axis=1) == r.argmax(axis=1)).sum() for (m, _), (r, _) in zip(model, ref))
        result.update(reference_perplexity=float(np.exp(ref_nll / count)), kld=float(kld / count),
                      top1_agreement=float(top1 / count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
