#!/usr/bin/env python3
"""Regenerates tests/fixtures/llama_greedy.json: llama.cpp's (llama-cpp-python's)
tokenization and greedy completions for the SmolLM2 Q4_1 GGUF.

    $MODELSHIP_CACHE/venv/bin/python scripts/reference/llama_greedy.py MODEL.gguf OUT.json

The Rust tests compare modelship's tokenizer and greedy output against this file.
"""
import json
import sys

import numpy as np

from llama_cpp import Llama

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village",
    "The three primary colors are",
    "Water boils at 100 degrees Celsius, which is",
    "List of prime numbers: 2, 3, 5, 7,",
    "<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n",
    "The best way to learn a new language is",
    "In 1969, the first human landed on",
    "Photosynthesis is the process by which",
    "import numpy as np\n\ndef mean(xs):",
    "Dear Sir or Madam,\n\nI am writing to",
    "The recipe calls for two cups of flour,",
    "Q: What is the largest planet in our solar system?\nA:",
    "To be, or not to be, that is",
    "<|im_start|>user\nGive me three tips for better sleep.<|im_end|>\n<|im_start|>assistant\n",
    # A prompt of ~600 tokens: attention runs in several query chunks.
    "Summarize the following passage.\n\n" + " ".join(
        ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
         "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
         "and by opposing end them."] * 16) + "\n\nSummary:",
]
TOKENIZE = [
    "Hello, world!",
    "1234567890 and 3.14159",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "naïve café über Straße — “quotes” and emoji 🚀🎉",
    "日本語のテキストと中文文本",
    "<|im_start|>system\nYou are helpful<|im_end|>",
    "don't won't it's we'll they've I'm",
    "x = [i**2 for i in range(10)]  # squares",
]
N_TOKENS = 32


def main(model_path, out_path):
    # llama.cpp's defaults (f16 KV cache); logits_all to record each step's top two.
    llm = Llama(model_path=model_path, n_ctx=1024, n_threads=2, seed=0, verbose=False, logits_all=True)
    tokenized = []
    for text in TOKENIZE:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        tokenized.append({"text": text, "tokens": ids})
    completions = []
    for prompt in PROMPTS:
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        generated = []
        for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            if tok == llm.token_eos() or len(generated) == N_TOKENS:
                break
            generated.append(tok)
        text = llm.detokenize(generated).decode("utf-8", errors="replace")
        # The two best tokens at each step of the same incremental decode, so a
        # test can tell a real mismatch from a near-tie.
        llm.reset()
        top2 = []
        for step in [prompt_ids] + [[t] for t in generated]:
            llm.eval(step)
            row = np.array(llm.scores[llm.n_tokens - 1])
            a, b = np.argsort(-row)[:2]
            top2.append([int(a), float(row[a]), int(b), float(row[b])])
        completions.append({"prompt": prompt, "prompt_tokens": prompt_ids, "tokens": generated,
                            "text": text, "top2": top2})
    with open(out_path, "w") as f:
        json.dump({"generator": "llama-cpp-python", "version": __import__("llama_cpp").__version__,
                   "max_tokens": N_TOKENS, "tokenize": tokenized, "completions": completions},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
