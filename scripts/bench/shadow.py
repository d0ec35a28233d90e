"""What shadow traffic costs the clients (issue 19): one MiniLM f32 replica
behind `modelship up`'s gateway under a closed-loop embedding load, first
alone (0%), then with a q8_0 revision in its shadow phase mirroring 10% and
100% of the requests, then alone again (the machine's drift). The shadow
replica shares this machine's cores, so the 100% row is the whole cost of
comparing every request on one machine: the mirrored copy, the second
model's work and the comparison. Also how many requests were compared and
how many samples were dropped under load.
Run by scripts/bench.sh (BENCH_ONLY=shadow for this table only)."""
import json
import os
import signal
import subprocess
import tempfile
import time

from paths import MINILM, OUT
from up import cli, http_load, start_up

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONCURRENCY = 8


def status(api):
    return json.loads(cli(api, "status", "minilm", "-o", "json"))


def deploy(api, work, name, percent=None):
    spec = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "minilm"},
            "spec": {"model": {"source": MINILM}, "replicas": 1, "resources": {"cpu": 1}}}
    if percent is not None:
        spec["spec"]["optimize"] = {"quantize": "q8_0"}
        spec["spec"]["rollout"] = {"shadow": {"percent": percent, "duration": "1h"},
                                   "canary": {"quality": {"min_live_cosine": 0.99}}}
    path = f"{work}/{name}.json"
    with open(path, "w") as f:
        json.dump(spec, f)
    if percent is None:
        cli(api, "deploy", "-f", path, "--wait")
        return
    cli(api, "deploy", "-f", path)
    deadline = time.time() + 300
    while time.time() < deadline:
        phase = status(api)["deployment"]["phase"]
        if phase.get("phase") == "shadow" and phase.get("analysis_from"):
            return
        time.sleep(0.2)
    raise SystemExit(f"the shadow of {percent}% never began")


def steady(api):
    """Rolls the shadow back and waits until the stable replica runs alone."""
    cli(api, "rollback", "minilm", "--to", "1")
    deadline = time.time() + 120
    while time.time() < deadline:
        replicas = json.loads(cli(api, "get", "replicas", "-o", "json"))
        if len(replicas) == 1 and replicas[0]["revision"] == 1 and replicas[0]["state"] == "ready":
            return
        time.sleep(0.2)
    raise SystemExit("the shadow's replica did not stop")


def dropped(gateway):
    text = subprocess.run(["curl", "-s", f"{gateway}/metrics"], capture_output=True, text=True).stdout
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("modelship_shadow_dropped_total"))


def load(gateway):
    body = json.dumps({"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."})
    return http_load(f"{gateway}/v1/embeddings", CONCURRENCY, SECONDS, body)


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="shadowbench-", dir=OUT)
    up, api, gateway = start_up(f"{work}/data")
    rows = []
    try:
        deploy(api, work, "v1")
        rows.append(("0% (no shadow)", load(gateway), None, 0.0))
        for percent in (10, 100):
            before = dropped(gateway)
            deploy(api, work, f"shadow{percent}", percent)
            r = load(gateway)
            live = status(api).get("analysis", {}).get("live", {})
            rows.append((f"{percent}%", r, live, dropped(gateway) - before))
            steady(api)
        rows.append(("0% again (drift)", load(gateway), None, 0.0))
        cli(api, "delete", "minilm")
    finally:
        up.send_signal(signal.SIGKILL)
    base = rows[0][1]
    print(f"| MiniLM f32, c={CONCURRENCY}, {SECONDS:.0f} s per row | gateway p50 µs | p99 µs | req/s "
          "| req/s vs 0% | client errors | compared | dropped | live cosine mean |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r, live, drop in rows:
        cos = (live or {}).get("cosine", {}).get("mean")
        print(f"| {name} | {r['p50_us']} | {r['p99_us']} | {r['rps']:.0f} | {r['rps'] / base['rps']:.2f}× | "
              f"{r['errors']} | {(live or {}).get('samples', '-') if live is not None else '-'} | "
              f"{int(drop) if live is not None else '-'} | {f'{cos:.5f}' if cos is not None else '-'} |")
    json.dump(rows, open(f"{OUT}/shadow.json", "w"), indent=1)


if __name__ == "__main__":
    main()
