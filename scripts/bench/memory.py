"""Estimate vs measured peak RSS (issue 4): `modelship serve` for MiniLM and
MPNet (f32 HF directory, q8_0 GGUF), SmolLM2 (q4_1, q8_0, f16), Qwen2.5 (Q4_K_M, and
its bf16 checkpoint) and Gemma 3 at two
context/concurrency settings each, under a load that fills every limit
(embeddings: two requests, each one full batch of full-length inputs; generation:
`max_concurrent` streams whose prompt and completion reach `max_context`).
Compares VmHWM with `modelship plan --json`'s `estimate.total_bytes`.
Run by scripts/bench.sh (BENCH_ONLY=memory for this table only; MEMORY_ONLY=NAME
and MEMORY_CONTEXT=N keep the cases whose label holds NAME and the settings
of that max_context)."""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from paths import BIN, CORPUS, GEMMA, MINILM, MPNET, OUT, QWEN, QWEN_CHECKPOINT, SMOL

TEXT = open(CORPUS, encoding="utf-8").read()
WORK = f"{OUT}/memory"
PORT = 18311


def quantized(model, typ, name):
    out = f"{WORK}/{name}.{typ}.gguf"
    if not os.path.exists(out):
        subprocess.run([BIN, "quantize", model, "--to", typ, "-o", out], check=True, stdout=subprocess.DEVNULL)
    return out


def request(path, body):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=600)
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def estimate(model, serving):
    spec = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m"}, "spec": {"model": {"source": model}, "serving": serving,
                                                 "resources": {"cpu": 2}}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(spec, f)  # JSON is YAML
    out = subprocess.run([BIN, "plan", "-f", f.name, "--json"], check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    return json.loads(out)["estimate"]


def load_embeddings(serving):
    # Inputs longer than the context, truncated to it: every batch is full.
    words = TEXT.split()
    text = " ".join(words[: serving["max_context"] * 2])
    per_request = max(1, serving["max_batch_tokens"] // serving["max_context"])

    def client():
        status, body = request("/v1/embeddings", {"input": [text] * per_request, "truncate": True})
        assert status == 200, body[:200]
    # Each request is one full batch; two keep the next batch queued.
    threads = [threading.Thread(target=client) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]


def load_generation(serving):
    ctx, n = serving["max_context"], serving["max_concurrent"]
    gen = 32
    words = TEXT.split()
    # Tokens per word of this text, from the server's usage count.
    status, body = request("/v1/completions", {"prompt": " ".join(words[:200]), "max_tokens": 1})
    assert status == 200, body[:200]
    per_word = json.loads(body)["usage"]["prompt_tokens"] / 200
    prompt = " ".join(words[: int((ctx - gen - 16) / per_word)])

    # Connected first, then sent together: the worst case the estimate
    # bounds is every prompt in one forward pass.
    start = threading.Barrier(n)

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=600)
        conn.connect()
        start.wait()
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": gen, "temperature": 0}),
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.read()[:200]
        r.read()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]


def measure(model, serving, task):
    proc = subprocess.Popen([BIN, "serve", model, "--port", str(PORT), "--threads", "2",
                             "--max-context", str(serving["max_context"]),
                             "--max-concurrent", str(serving["max_concurrent"]),
                             "--max-batch-tokens", str(serving["max_batch_tokens"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        (load_embeddings if task == "embeddings" else load_generation)(serving)
        status = open(f"/proc/{proc.pid}/status").read()
        return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM"))) * 1024
    finally:
        proc.terminate()
        proc.wait()


def main():
    os.makedirs(WORK, exist_ok=True)
    cases = [
        ("MiniLM f32 (HF)", MINILM, "embeddings"),
        ("MiniLM q8_0", quantized(MINILM, "q8_0", "minilm"), "embeddings"),
        ("MPNet f32 (HF)", MPNET, "embeddings"),
        ("MPNet q8_0", quantized(MPNET, "q8_0", "mpnet"), "embeddings"),
        ("SmolLM2 q4_1", SMOL, "generate"),
        ("SmolLM2 q8_0", quantized(SMOL, "q8_0", "smollm"), "generate"),
        ("SmolLM2 f16", quantized(SMOL, "f16", "smollm"), "generate"),
        ("Qwen2.5-Coder-0.5B Q4_K_M", QWEN, "generate"),
        ("Gemma-3-270M Q4_K_M", GEMMA, "generate"),
        ("Qwen2.5-Coder-0.5B bf16 checkpoint", QWEN_CHECKPOINT, "generate"),
    ]
    if os.environ.get("MEMORY_ONLY"):
        cases = [c for c in cases if os.environ["MEMORY_ONLY"] in c[0]]
    settings = {
        "embeddings": [{"max_context": 128, "max_concurrent": 4, "max_batch_tokens": 2048},
                       {"max_context": 512, "max_concurrent": 4, "max_batch_tokens": 16384}],
        # A generation pass holds new prompts up to max_batch_tokens: one
        # 512-token prompt, or two 2048-token ones, each pass the load's
        # timing reaches every run (its first prompt starts a pass alone).
        "generate": [{"max_context": 512, "max_concurrent": 2, "max_batch_tokens": 512},
                     {"max_context": 2048, "max_concurrent": 4, "max_batch_tokens": 4096}],
    }
    if os.environ.get("MEMORY_CONTEXT"):
        settings = {task: [s for s in ss if str(s["max_context"]) == os.environ["MEMORY_CONTEXT"]]
                    for task, ss in settings.items()}
    rows = []
    for label, model, task in cases:
        for serving in settings[task]:
            est = estimate(model, serving)
            peak = measure(model, serving, task)
            err = est["total_bytes"] / peak - 1
            rows.append((label, serving, est, peak, err))
            print(f"  {label} {serving}: estimate {est['total_bytes'] / 2**20:.1f} MiB, "
                  f"measured {peak / 2**20:.1f} MiB, {100 * err:+.1f}%", file=sys.stderr)
    print("| model | max_context | max_concurrent | max_batch_tokens | weights | kv cache | activations | runtime "
          "| estimate MiB | measured peak RSS MiB | error |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, s, e, peak, err in rows:
        mib = lambda b: f"{b / 2**20:.1f}"
        print(f"| {label} | {s['max_context']} | {s['max_concurrent']} | {s['max_batch_tokens']} | "
              f"{mib(e['weights_bytes'])} | {mib(e['kv_cache_bytes'])} | {mib(e['activations_bytes'])} | "
              f"{mib(e['runtime_bytes'])} | {mib(e['total_bytes'])} | {mib(peak)} | {100 * err:+.1f}% |")


if __name__ == "__main__":
    main()
