"""The OpenAI surface's costs (docs/benchmarks.md, issue 16): decode tok/s
with and without a JSON schema, with and without penalties, and time to
first token with a 5-tool prompt; `modelship serve` over HTTP against
llama.cpp (llama-cpp-python, in-process, its own JSON-schema grammar and
penalties) on the same Qwen2.5 GGUF and threads, alternated, medians of 3.
Run through scripts/bench.sh (BENCH_ONLY=openai)."""
import http.client
import json
import os
import subprocess
import sys
import time

from paths import BIN, OUT, QWEN, THREADS

PORT = 18140
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MAX_TOKENS = 128
PROMPT = [{"role": "user", "content": "List twenty fruits with a made-up price for each."}]
SCHEMA = {
    "type": "object",
    "properties": {"fruits": {"type": "array", "minItems": 20, "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
        "required": ["name", "price"], "additionalProperties": False}}},
    "required": ["fruits"], "additionalProperties": False,
}
PENALTIES = {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1}


def tool(name, what, props):
    return {"type": "function", "function": {"name": name, "description": what, "parameters": {
        "type": "object", "properties": {p: {"type": t} for p, t in props.items()},
        "required": list(props)}}}


TOOLS = [tool("get_weather", "The current weather in a city.", {"city": "string", "unit": "string"}),
         tool("get_time", "The local time in a time zone.", {"zone": "string"}),
         tool("search_web", "Search the web.", {"query": "string", "results": "integer"}),
         tool("send_email", "Send an email.", {"to": "string", "subject": "string", "body": "string"}),
         tool("convert_currency", "Convert money.", {"amount": "number", "from": "string", "to": "string"})]
QUESTION = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
median = lambda xs: sorted(xs)[len(xs) // 2]


def ours_stream(body):
    """(seconds to the first chunk, decode tok/s after it, completion tokens)."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    first = last = None
    tokens = 0
    for line in r:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        now = time.perf_counter()
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif first is None:
            first = now
        else:
            last = now
    return first - t0, (tokens - 1) / (last - first), tokens


def llama_side():
    """Runs in a subprocess: llama.cpp's numbers for the same requests."""
    from llama_cpp import Llama
    llm = Llama(model_path=QWEN, n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    ids = json.loads(sys.argv[2])

    def stream(**kw):
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for _ in llm.create_chat_completion(messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True, **kw):
            now = time.perf_counter()
            n += 1
            if first is None:
                first = now
            last = now
        return (n - 1) / (last - first), n

    out = {"plain": [], "schema": [], "penalties": [], "ttft_tools": [], "ttft_plain": []}
    for _ in range(ROUNDS):
        out["plain"].append(stream())
        out["schema"].append(stream(response_format={"type": "json_object", "schema": SCHEMA}))
        out["penalties"].append(stream(presence_penalty=0.5, frequency_penalty=0.5, repeat_penalty=1.1))
        for key, prompt in (("ttft_tools", ids["tools"]), ("ttft_plain", ids["plain"])):
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt)
            llm.sample(temp=0)
            out[key].append(time.perf_counter() - t)
    print(json.dumps(out))


def main():
    os.makedirs(OUT, exist_ok=True)
    proc = subprocess.Popen([BIN, "serve", QWEN, "--port", str(PORT), "--threads", str(THREADS),
                             "--max-context", "4096"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                http.client.HTTPConnection("127.0.0.1", PORT, timeout=5).request("GET", "/v2/health/ready")
                break
            except OSError:
                time.sleep(0.1)
        base = {"messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        schema = {**base, "response_format": {"type": "json_schema", "json_schema": {"name": "fruits", "schema": SCHEMA}}}
        ours_stream(base)  # warm-up (and the grammar's vocabulary, built once)
        ours_stream(schema)
        ours = {"plain": [], "schema": [], "penalties": [], "ttft_tools": [], "ttft_plain": []}
        for _ in range(ROUNDS):
            ours["plain"].append(ours_stream(base)[1:])
            ours["schema"].append(ours_stream(schema)[1:])
            ours["penalties"].append(ours_stream({**base, **PENALTIES})[1:])
            ours["ttft_tools"].append(ours_stream({"messages": QUESTION, "tools": TOOLS, "max_tokens": 1})[0])
            ours["ttft_plain"].append(ours_stream({"messages": QUESTION, "max_tokens": 1})[0])
        # The same prompts as token ids, for llama.cpp's prefill.
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        ids = {}
        for key, extra in (("tools", {"tools": TOOLS}), ("plain", {})):
            conn.request("POST", "/tokenize", body=json.dumps({"messages": QUESTION, **extra}),
                         headers={"content-type": "application/json"})
            ids[key] = json.loads(conn.getresponse().read())["tokens"]
    finally:
        proc.terminate()
        proc.wait()
    llama = json.loads(subprocess.check_output([sys.executable, __file__, "--llama", json.dumps(ids)],
                                               stderr=subprocess.DEVNULL))
    rows = []
    for key, label in (("plain", "no constraint, no penalties"),
                       ("schema", "JSON schema (20-item array of objects)"),
                       ("penalties", "presence 0.5, frequency 0.5, repetition 1.1")):
        o, l = median([x[0] for x in ours[key]]), median([x[0] for x in llama[key]])
        rows.append((label, o, l, [round(x[0], 1) for x in ours[key]], [round(x[0], 1) for x in llama[key]],
                     median([x[1] for x in ours[key]]), median([x[1] for x in llama[key]])))
    f = lambda x: f"{x:,.1f}"
    out = [f"| Qwen2.5-Coder-0.5B Q4_K_M chat, {THREADS} threads, greedy, ≤{MAX_TOKENS} tokens; median of {ROUNDS} "
           "| decode tok/s ours (runs) | llama.cpp (runs) | **ratio** | tokens ours / llama.cpp |",
           "|---|---:|---:|---:|---:|"]
    for label, o, l, oa, la, on, ln in rows:
        out.append(f"| {label} | {f(o)} {oa} | {f(l)} {la} | **{o / l:.2f}×** | {on} / {ln} |")
    # Each round's runs follow one another: their ratio, paired, is steadier
    # than a ratio of medians on a noisy machine.
    paired = lambda runs, key: median([a[0] / b[0] for a, b in zip(runs[key], runs["plain"])])
    for key, label in (("schema", "with a schema / without"), ("penalties", "with penalties / without")):
        out.append(f"| **{label}** (paired by round) | **{paired(ours, key):.2f}×** | **{paired(llama, key):.2f}×** | | |")
    tt = lambda xs: median(xs) * 1000
    out += ["", f"| time to first token, {THREADS} threads; median of {ROUNDS} | prompt tokens | ours (HTTP, streamed) "
            "| llama.cpp (prefill + sample, in-process) | **ratio** |", "|---|---:|---:|---:|---:|"]
    for key, label in (("ttft_plain", "one question"), ("ttft_tools", "the same with 5 tools")):
        n = len(ids["tools" if key == "ttft_tools" else "plain"])
        out.append(f"| {label} | {n} | {tt(ours[key]):.0f} ms | {tt(llama[key]):.0f} ms "
                   f"| **{median(llama[key]) / median(ours[key]):.2f}×** |")
    json.dump({"ours": ours, "llama": llama}, open(f"{OUT}/openai.json", "w"), indent=1)
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--llama":
        llama_side()
    else:
        main()
