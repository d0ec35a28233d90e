"""Scale to zero (issue 17): the first request to a deployment at zero
replicas, held by the gateway while the controller wakes it, against the
floor any cold start has (`modelship serve` of the same model, from exec to
its first answer, no control plane) and against the same request warm; and
a burst of requests at zero, every one held and answered. MiniLM
(embeddings) and SmolLM2 (a one-token completion). Medians of ROUNDS.
Run by scripts/bench.sh (BENCH_ONLY=cold for this table only)."""
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from gateway import cli, start_up
from paths import BIN, MINILM, OUT, SMOL

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BURST = int(os.environ.get("BENCH_BURST", "16"))

MODELS = {
    "MiniLM": (MINILM, "/v1/embeddings", {"input": "a cold request"}),
    "SmolLM2": (SMOL, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 1}),
}


def request(base, path, body, timeout=300):
    """One request; its status and seconds."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - t


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_start(model, path, body):
    """`modelship serve` from exec to its first 200."""
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([BIN, "serve", model, "--port", str(port), "--name", "m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            status, _ = request(f"http://127.0.0.1:{port}", path, {"model": "m", **body}, timeout=30)
            if status == 200:
                return time.perf_counter() - t
            if proc.poll() is not None:
                raise SystemExit(f"modelship serve {model} exited")
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait()


def replicas(api, name):
    return [r for r in json.loads(cli(api, "get", "replicas", name, "-o", "json"))]


def wait_zero(api, name, deadline=60):
    end = time.time() + deadline
    while replicas(api, name):
        if time.time() > end:
            raise SystemExit(f"{name} never scaled to zero")
        time.sleep(0.1)


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=OUT) as d:
        up, api, gateway = start_up(f"{d}/data")
        try:
            for label, (model, path, body) in MODELS.items():
                name = label.lower()
                spec = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
                        "metadata": {"name": name},
                        "spec": {"model": {"source": model}, "replicas": 1,
                                 "autoscale": {"min": 0, "max": 1, "target_concurrency": 64,
                                               "stable_window": "2s", "panic_window": "1s",
                                               "idle_window": "1s"}}}
                with open(f"{d}/{name}.json", "w") as f:
                    json.dump(spec, f)
                cli(api, "deploy", "-f", f"{d}/{name}.json", "--wait")
                req = {"model": name, **body}
                warm = []
                for _ in range(ROUNDS):
                    status, s = request(gateway, path, req)
                    assert status == 200, status
                    warm.append(s)
                cold = []
                for _ in range(ROUNDS):
                    wait_zero(api, name)
                    status, s = request(gateway, path, req)
                    assert status == 200, f"cold {label}: {status}"
                    cold.append(s)
                wait_zero(api, name)
                results = []
                def one():
                    results.append(request(gateway, path, req))
                threads = [threading.Thread(target=one) for _ in range(BURST)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                ok = [s for status, s in results if status == 200]
                direct = [direct_start(model, path, body) for _ in range(ROUNDS)]
                cli(api, "delete", name)
                med = statistics.median
                rows.append((label, med(cold), med(direct), med(warm), len(ok), med(ok) if ok else 0.0,
                             max(ok) if ok else 0.0))
        finally:
            up.terminate()
            up.wait()
    lines = [
        f"| model | cold through the gateway | `serve` exec → first answer | ratio | warm | burst of {BURST} at zero: answered | median | slowest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, cold, direct, warm, ok, p50, worst in rows:
        lines.append(f"| {label} | {cold * 1e3:.0f} ms | {direct * 1e3:.0f} ms | {cold / direct:.2f}× | "
                     f"{warm * 1e3:.1f} ms | {ok}/{BURST} | {p50 * 1e3:.0f} ms | {worst * 1e3:.0f} ms |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(OUT, "cold.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
