#!/usr/bin/env python3
"""How far apart two llama_logprobs.py fixtures are, in nats: the chosen
tokens' log-probabilities and the top-5 alternatives both list, along each
prompt and its greedy continuation while the two agree on the tokens.

    PY=$MODELSHIP_CACHE/venv/bin/python M=$MODELSHIP_CACHE/models
    modelship quantize $M/hf/SmolLM2-135M-Instruct-f32 --to f16 -o target/smollm-f16.gguf
    $PY scripts/reference/llama_logprobs.py target/smollm-f16.gguf target/llama_logprobs_f16.json
    $PY scripts/reference/logprob_spread.py tests/fixtures/llama_logprobs.json target/llama_logprobs_f16.json

(docs/benchmarks.md: llama.cpp's own Q4_1 and F16 runs of the same weights,
the noise floor the logprob test's bounds are set against.)
"""
import json
import sys

a, b = (json.load(open(p)) for p in sys.argv[1:3])
chosen, alternatives = [], []
for ca, cb in zip(a["cases"], b["cases"]):
    for x, y in zip(ca["prompt_logprobs"] + ca["generated"], cb["prompt_logprobs"] + cb["generated"]):
        if x["token"] != y["token"]:
            break
        chosen.append(abs(x["logprob"] - y["logprob"]))
        theirs = dict((i, lp) for i, lp in y["top"])
        alternatives += [abs(lp - theirs[i]) for i, lp in x["top"][:5] if i in theirs]
for name, d in (("chosen tokens", chosen), ("top-5 alternatives", alternatives)):
    print(f"{name}: mean {sum(d) / len(d):.3f}, max {max(d):.3f} nats, {len(d)} compared")
