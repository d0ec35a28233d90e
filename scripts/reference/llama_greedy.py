#!/usr/bin/env python3
"""Regenerates the greedy fixtures: llama.cpp's (llama-cpp-python's)
tokenization and greedy completions for one GGUF.

    PY=$MODELSHIP_CACHE/venv/bin/python M=$MODELSHIP_CACHE/models
    $PY scripts/reference/llama_greedy.py $M/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/llama_greedy.json
    $PY scripts/reference/llama_greedy.py --chat chatml $M/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf tests/fixtures/qwen2_greedy.json
    $PY scripts/reference/llama_greedy.py --chat gemma $M/gemma-3-270m.Q4_K_M.gguf tests/fixtures/gemma3_greedy.json

`--chat` picks how the chat-templated prompts are written (SmolLM2's and
Qwen's ChatML, Gemma's turns); the SmolLM2 file keeps its original list.
The Rust tests compare modelship's tokenizer and greedy output against these.
"""
import json
import sys

import numpy as np

import llama_cpp
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
# Added for the Qwen2 and Gemma 3 fixtures: at least 25 strings with the
# prompts, covering code, digits, unicode, whitespace runs and templates.
MORE_TOKENIZE = [
    "    def __init__(self, x: int) -> None:\n        self.x = x\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "3.14159265358979 1,000,000 0x1F 1e-9 -42 +7 12:30:45 2026-12-01",
    "a  b   c    d     e\n\n\nf\t\tg \r\n h",
    "                indented by sixteen spaces",
    "Ünïcödé: Ελληνικά, русский, العربية, עברית, हिन्दी, 한국어",
    "emoji 👩‍💻 🇫🇷 ❤️ 1️⃣ and math ∑ ∫ √ ≤ ≥ ≠ ∞",
    "URL https://example.com/path?q=a+b&x=%20y#frag and e-mail a.b@c.de",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "ALL CAPS SHOUTING, MiXeD cAsE, snake_case_name, camelCaseName, kebab-case-name",
    "'quoted' \"double\" `backtick` (parens) [brackets] {braces} <angles>",
    "The year 1969; 20,000 leagues; 99 bottles; 007; 1st, 2nd, 3rd",
    "    \n    \n",
    "trailing spaces   ",
    "<html><body><p class=\"x\">Hi&nbsp;there</p></body></html>",
    "你好，世界！こんにちは世界。",
]
CHAT = {
    "chatml": [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
    ],
    "gemma": [
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n",
    ],
}
N_TOKENS = 32


def main(model_path, out_path, chat=None):
    if chat is not None:
        global PROMPTS, TOKENIZE
        # ChatML prompts written for SmolLM2 make way for the model's own.
        PROMPTS = [p for p in PROMPTS if "<|im_start|>" not in p] + CHAT[chat]
        TOKENIZE = [t for t in TOKENIZE if "<|im_start|>" not in t] + MORE_TOKENIZE + CHAT[chat][:1]
    # llama.cpp's defaults (f16 KV cache); logits_all to record each step's top two.
    llm = Llama(model_path=model_path, n_ctx=1024, n_threads=2, seed=0, verbose=False, logits_all=True)
    tokenized = []
    for text in TOKENIZE:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=chat is not None, special=True)
        tokenized.append({"text": text, "tokens": ids})
    completions = []
    for prompt in PROMPTS:
        # The new fixtures tokenize as a server does: with the model's BOS
        # where its metadata asks for one (Gemma).
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=chat is not None, special=True)
        llm.reset()
        generated = []
        for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            # The SmolLM2 fixture stopped at EOS alone; the newer ones at any
            # end-of-generation token, as a server stops.
            end = llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) if chat is not None else tok == llm.token_eos()
            if end or len(generated) == N_TOKENS:
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
    args = sys.argv[1:]
    chat = None
    if args[0] == "--chat":
        chat, args = args[1], args[2:]
    main(args[0], args[1], chat)
