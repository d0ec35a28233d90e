"""llama.cpp's prompt and decode speed on the same GGUF, tokens and threads as
bench_generate: one prompt eval, then single-token greedy steps. Prints JSON."""
import json
import sys
import time

import numpy as np
from llama_cpp import Llama

model, text, threads, n_prompt, n_gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=model, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
            n_batch=max(n_prompt, 8), verbose=False)
ids = llm.tokenize(open(text, encoding="utf-8").read().encode("utf-8"), add_bos=False, special=False)[:n_prompt]
llm.eval(ids[:8])  # warm-up
llm.reset()
t = time.perf_counter()
llm.eval(ids)
prompt_s = time.perf_counter() - t
t = time.perf_counter()
for _ in range(n_gen):
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    llm.eval([nxt])
decode_s = time.perf_counter() - t
print(json.dumps({"prompt_tokens": len(ids), "prompt_tps": round(len(ids) / prompt_s, 2),
                  "gen_tokens": n_gen, "decode_tps": round(n_gen / decode_s, 2)}))
