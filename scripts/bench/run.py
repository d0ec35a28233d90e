"""Benchmarks of docs/benchmarks.md, each against a peer measured in the same
run on the same threads. Run through scripts/bench.sh. Prints a markdown
report and writes target/bench/results.json."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from paths import BIN, BUILD, CACHE, GEMMA, MINILM, OUT, QWEN, QWEN_CHECKPOINT, ROOT, SMOL, TEXT, THREADS

ONNX = f"{CACHE}/models/all-MiniLM-L6-v2-int8/model.onnx"
SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))


def sentences(n=2000):
    lines = [l.strip() for l in open(TEXT, encoding="utf-8", errors="replace")]
    lines = [l for l in lines if 20 <= len(l) <= 200]
    return lines[:n]


def start_server(model, port, extra=()):
    t0 = time.perf_counter()
    proc = subprocess.Popen([BIN, "serve", model, "--port", str(port), "--threads", str(THREADS), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, t0


def post(conn, path, body):
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def first_success(port, path, body, t0, timeout=120):
    while time.perf_counter() - t0 < timeout:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status, _ = post(conn, path, body)
            if status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("server did not answer")


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def run_clients(client, concurrency):
    """Runs client(k) for k in 0..concurrency on threads; returns the seconds taken."""
    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def embed_load(port, texts, concurrency, seconds):
    """Each of `concurrency` clients sends one-text requests back to back."""
    done = [0] * concurrency
    failures = [0]
    deadline = time.perf_counter() + seconds

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        while time.perf_counter() < deadline:
            status, _ = post(conn, "/v1/embeddings", {"input": texts[i % len(texts)]})
            if status == 200:
                done[k] += 1
            else:
                failures[0] += 1
            i += concurrency

    elapsed = run_clients(client, concurrency)
    if failures[0]:
        raise RuntimeError(f"{failures[0]} failed requests")
    return sum(done) / elapsed


def generate_load(port, texts, concurrency, max_tokens=64):
    """Aggregate generated tokens/s of `concurrency` simultaneous greedy completions."""
    produced = [0] * concurrency

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        body = {"prompt": texts[k], "max_tokens": max_tokens, "temperature": 0}
        status, data = post(conn, "/v1/completions", body)
        if status != 200:
            raise RuntimeError(f"status {status}")
        produced[k] = json.loads(data)["usage"]["completion_tokens"]

    # The clients run first: `sum(produced)` read before them was 0.
    elapsed = run_clients(client, concurrency)
    return sum(produced) / elapsed


# (label, what we serve, what llama.cpp runs: the same weights as GGUF). The
# bf16 checkpoint's peer is its f16 GGUF, written by `modelship quantize`
# (f16 rather than bf16: llama.cpp's usual 16-bit CPU path).
QWEN_F16 = f"{OUT}/qwen2.5-checkpoint.f16.gguf"
FAMILIES = [("Qwen2.5-Coder-0.5B-Instruct Q4_K_M", QWEN, QWEN),
            ("Gemma-3-270M Q4_K_M", GEMMA, GEMMA),
            ("Qwen2.5-Coder-0.5B-Instruct bf16 checkpoint (llama.cpp: f16 GGUF)", QWEN_CHECKPOINT, QWEN_F16)]


def generation_pair(model, peer=None, n_prompt=128, n_gen=128, rounds=3):
    """Ours (bench_generate) on `model` and llama.cpp on `peer` (the same
    GGUF by default), same tokens and threads, alternated `rounds` times;
    medians and every run."""
    runs = {"ours": [], "llama": []}
    for _ in range(rounds):
        runs["ours"].append(json.loads(subprocess.check_output(
            [f"{BUILD}/examples/bench_generate", model, TEXT, str(THREADS), str(n_prompt), str(n_gen)])))
        runs["llama"].append(json.loads(subprocess.check_output(
            [sys.executable, f"{ROOT}/scripts/bench/llama_cpp_generate.py", peer or model, TEXT, str(THREADS),
             str(n_prompt), str(n_gen)], stderr=subprocess.DEVNULL)))
    median = lambda xs: sorted(xs)[len(xs) // 2]
    r = {}
    for who in ("ours", "llama"):
        for k in ("prompt_tps", "decode_tps"):
            r[f"{who}_{k}"] = median([x[k] for x in runs[who]])
            r[f"{who}_{k}_all"] = [x[k] for x in runs[who]]
    r["llama_load_s"] = median([x["load_s"] for x in runs["llama"]])
    r["llama_peak_rss_mib"] = median([x["peak_rss_mib"] for x in runs["llama"]])
    return r


def families():
    """The decoder families beyond llama: speed against llama.cpp, start to
    first token and peak RSS of `modelship serve` after a ~700-token prompt."""
    rows = []
    if not os.path.exists(QWEN_F16):
        subprocess.check_call([BIN, "quantize", QWEN_CHECKPOINT, "--to", "f16", "-o", QWEN_F16],
                              stdout=subprocess.DEVNULL)
    for k, (label, model, peer) in enumerate(FAMILIES):
        r = generation_pair(model, peer)
        port = 18120 + k
        proc, t0 = start_server(model, port)
        r["start_s"] = first_success(port, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, t0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        post(conn, "/v1/completions", {"prompt": " ".join(sentences(60)), "max_tokens": 64, "temperature": 0})
        r["peak_rss_mib"] = peak_rss_mib(proc.pid)
        stop(proc)
        rows.append((label, r))
    f = lambda x: f"{x:,.1f}"
    out = [f"| {THREADS} threads, 128-token prompt, 128 decode steps; median of 3 | prompt tok/s ours | llama.cpp "
           "| **ratio** | decode tok/s ours | llama.cpp | **ratio** | start → first token ours (llama.cpp load) "
           "| peak RSS ours (llama.cpp) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows:
        out.append(f"| {label} | {f(r['ours_prompt_tps'])} {r['ours_prompt_tps_all']} | {f(r['llama_prompt_tps'])} "
                   f"{r['llama_prompt_tps_all']} | **{r['ours_prompt_tps'] / r['llama_prompt_tps']:.2f}×** | "
                   f"{f(r['ours_decode_tps'])} {r['ours_decode_tps_all']} | {f(r['llama_decode_tps'])} "
                   f"{r['llama_decode_tps_all']} | **{r['ours_decode_tps'] / r['llama_decode_tps']:.2f}×** | "
                   f"{r['start_s'] * 1000:.0f} ms ({r['llama_load_s'] * 1000:.0f} ms) | "
                   f"{r['peak_rss_mib']:.0f} MiB ({r['llama_peak_rss_mib']:.0f} MiB) |")
    json.dump(rows, open(f"{OUT}/families.json", "w"), indent=1)
    return "\n".join(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    if os.environ.get("BENCH_ONLY") == "generate":
        print(families())
        return
    texts = sentences()
    json.dump(texts, open(f"{OUT}/texts.json", "w"))
    r = {"threads": THREADS, "seconds": SECONDS}

    # --- embeddings: ours over HTTP vs ONNX Runtime int8 in-process
    proc, t0 = start_server(MINILM, 18101)
    r["minilm_start_s"] = first_success(18101, "/v1/embeddings", {"input": "warm up"}, t0)
    embed_load(18101, texts, 4, 2)  # warm-up
    r["ours_c1_tps"] = embed_load(18101, texts, 1, SECONDS)
    r["ours_c32_tps"] = embed_load(18101, texts, 32, SECONDS)
    r["minilm_peak_rss_mib"] = peak_rss_mib(proc.pid)
    stop(proc)
    ort = json.loads(subprocess.check_output([sys.executable, f"{ROOT}/scripts/bench/ort_embed.py", ONNX,
                                              f"{MINILM}/tokenizer.json", f"{OUT}/texts.json", str(THREADS), str(SECONDS)]))
    r["ort_b1_tps"], r["ort_b32_tps"] = ort["batch1_tps"], ort["batch32_tps"]

    # --- generation: ours in-process vs llama.cpp, same GGUF, tokens, threads;
    # alternated three times (the machine is shared), medians reported.
    runs = {"ours": [], "llama": []}
    for _ in range(3):
        runs["ours"].append(json.loads(subprocess.check_output(
            [f"{BUILD}/examples/bench_generate", SMOL, TEXT, str(THREADS), "128", "128"])))
        runs["llama"].append(json.loads(subprocess.check_output(
            [sys.executable, f"{ROOT}/scripts/bench/llama_cpp_generate.py", SMOL, TEXT, str(THREADS), "128", "128"])))
    median = lambda xs: sorted(xs)[len(xs) // 2]
    for who in ("ours", "llama"):
        for k in ("prompt_tps", "decode_tps"):
            r[f"{who}_{k}"] = median([x[k] for x in runs[who]])
            r[f"{who}_{k}_all"] = [x[k] for x in runs[who]]

    proc, t0 = start_server(SMOL, 18102, ("--max-concurrent", "8"))
    r["smollm_start_s"] = first_success(18102, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, t0)
    for c in (1, 4, 8):
        r[f"gen_c{c}_tps"] = generate_load(18102, texts, c)
    conn = http.client.HTTPConnection("127.0.0.1", 18102, timeout=120)
    post(conn, "/v1/completions", {"prompt": " ".join(texts[:40]), "max_tokens": 256, "temperature": 0})
    r["smollm_peak_rss_mib"] = peak_rss_mib(proc.pid)
    stop(proc)

    json.dump(r, open(f"{OUT}/results.json", "w"), indent=1)
    print(report(r))
    print(families())


def report(r):
    f = lambda x: f"{x:,.1f}"
    return f"""| embeddings (all-MiniLM-L6-v2, {r['threads']} threads) | texts/s |
|---|---|
| modelship f32, HTTP, concurrency 1 | {f(r['ours_c1_tps'])} |
| modelship f32, HTTP, concurrency 32 | {f(r['ours_c32_tps'])} |
| ONNX Runtime int8, in-process, batch 1 | {f(r['ort_b1_tps'])} |
| ONNX Runtime int8, in-process, batch 32 | {f(r['ort_b32_tps'])} |
| **ratio ours/ORT, concurrency 1 vs batch 1** | **{r['ours_c1_tps']/r['ort_b1_tps']:.2f}×** |
| **ratio ours/ORT, concurrency 32 vs batch 32** | **{r['ours_c32_tps']/r['ort_b32_tps']:.2f}×** |
| **batching gain (ours, concurrency 32 / 1)** | **{r['ours_c32_tps']/r['ours_c1_tps']:.2f}×** |

| generation (SmolLM2-135M Q4_1, {r['threads']} threads, 128-token prompt, 128 decode steps; median of 3) | prompt tok/s | decode tok/s |
|---|---|---|
| modelship | {f(r['ours_prompt_tps'])} (runs {r['ours_prompt_tps_all']}) | {f(r['ours_decode_tps'])} (runs {r['ours_decode_tps_all']}) |
| llama.cpp (llama-cpp-python) | {f(r['llama_prompt_tps'])} (runs {r['llama_prompt_tps_all']}) | {f(r['llama_decode_tps'])} (runs {r['llama_decode_tps_all']}) |
| **ratio ours/llama.cpp** | **{r['ours_prompt_tps']/r['llama_prompt_tps']:.2f}×** | **{r['ours_decode_tps']/r['llama_decode_tps']:.2f}×** |

| continuous batching (SmolLM2 over HTTP, 64 greedy tokens each) | generated tok/s, all streams together |
|---|---|
| concurrency 1 | {f(r['gen_c1_tps'])} |
| concurrency 4 | {f(r['gen_c4_tps'])} ({r['gen_c4_tps']/r['gen_c1_tps']:.2f}×) |
| concurrency 8 | {f(r['gen_c8_tps'])} ({r['gen_c8_tps']/r['gen_c1_tps']:.2f}×) |

| model | process start → first successful response | peak RSS |
|---|---|---|
| all-MiniLM-L6-v2 (f32 safetensors) | {r['minilm_start_s']*1000:.0f} ms | {r['minilm_peak_rss_mib']:.0f} MiB (after the concurrency-32 load) |
| SmolLM2-135M-Instruct Q4_1 GGUF | {r['smollm_start_s']*1000:.0f} ms | {r['smollm_peak_rss_mib']:.0f} MiB (after a ~700-token prompt + 256 tokens) |
"""


if __name__ == "__main__":
    main()
