#!/usr/bin/env python3
"""Regenerates tests/fixtures/llama_logprobs.json: llama.cpp's (llama-cpp-python's)
log-probabilities for a few prompts on one GGUF: for every prompt token after
the first, its log-probability and the top 20 at its place; then the same for
`steps` greedy tokens after the prompt.

    PY=$MODELSHIP_CACHE/venv/bin/python M=$MODELSHIP_CACHE/models
    $PY scripts/reference/llama_logprobs.py $M/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/llama_logprobs.json

The Rust tests ask modelship's server for `logprobs` with `echo` and compare
(top tokens within 0.1 nats): they are the model's distribution, from the
same GGUF, independent of our code.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Q: What is the largest planet in our solar system?\nA:",
]
STEPS = 8
TOP = 20


def log_softmax(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def top(lp):
    ids = np.argsort(-lp, kind="stable")[:TOP]
    return [[int(i), float(lp[i])] for i in ids]


def main(model, out):
    llm = Llama(model_path=model, n_ctx=512, logits_all=True, verbose=False, n_threads=2)
    cases = []
    for text in PROMPTS:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(tokens)
        prompt = []
        for i in range(1, len(tokens)):
            lp = log_softmax(np.array(llm.scores[i - 1]))
            prompt.append({"token": int(tokens[i]), "logprob": float(lp[tokens[i]]), "top": top(lp)})
        generated = []
        for _ in range(STEPS):
            lp = log_softmax(np.array(llm.scores[llm.n_tokens - 1]))
            nxt = int(np.argmax(lp))
            generated.append({"token": nxt, "logprob": float(lp[nxt]), "top": top(lp)})
            llm.eval([nxt])
        cases.append({"prompt": text, "tokens": [int(t) for t in tokens],
                      "prompt_logprobs": prompt, "generated": generated})
    import llama_cpp
    json.dump({"generator": "llama-cpp-python", "version": llama_cpp.__version__,
               "top": TOP, "cases": cases}, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
