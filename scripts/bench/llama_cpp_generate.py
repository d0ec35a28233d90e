"""llama.cpp's prompt and decode speed on the same GGUF, tokens and threads as
bench_generate: one prompt eval, then single-token steps fed the text's next
tokens (the work of a decode step does not depend on the token). Prints JSON."""
import json
import resource
import sys
import time

from llama_cpp import Llama

model, text, threads, n_prompt, n_gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t_load = time.perf_counter()
llm = Llama(model_path=model, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
            n_batch=max(n_prompt, 8), verbose=False)
load_s = time.perf_counter() - t_load
all_ids = llm.tokenize(open(text, encoding="utf-8").read().encode("utf-8"), add_bos=False, special=False)
ids, following = all_ids[:n_prompt], all_ids[n_prompt:n_prompt + n_gen]
llm.eval(ids[:8])  # warm-up
llm.reset()
t = time.perf_counter()
llm.eval(ids)
prompt_s = time.perf_counter() - t
t = time.perf_counter()
for tok in following:
    llm.eval([tok])
decode_s = time.perf_counter() - t
print(json.dumps({"prompt_tokens": len(ids), "prompt_tps": round(len(ids) / prompt_s, 2),
                  "gen_tokens": n_gen, "decode_tps": round(n_gen / decode_s, 2), "load_s": round(load_s, 3),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
