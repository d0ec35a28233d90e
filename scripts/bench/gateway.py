"""The gateway's added latency and throughput (issue 5): one MiniLM replica
behind `modelship up`'s gateway and behind HAProxy (configured by
`modelship render haproxy`), against the replica directly, in the same run,
alternating targets round by round. Two requests: the replica's readiness
route through the proxy (the proxy hop alone) and a one-sentence embedding.
Besides each target's median p50 over the rounds, the median of the
per-round differences gateway − HAProxy: the two run back to back within a
round, so the machine's drift between rounds (as large as the hop itself
on the embedding) cancels out of it.
Run by scripts/bench.sh (BENCH_ONLY=gateway for this table only)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from paths import MINILM, OUT
from up import cli, http_load, start_up

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def load(url, concurrency, body=None):
    return http_load(url, concurrency, SECONDS, body)


def main():
    if not shutil.which("haproxy"):
        raise SystemExit("haproxy is missing: run scripts/setup-peers.sh --bench")
    work = tempfile.mkdtemp(prefix="gwbench-", dir=OUT if os.path.isdir(OUT) else None)
    up, api, gateway = start_up(f"{work}/data")
    haproxy, replica_pid = None, None
    try:
        spec = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "minilm"},
                "spec": {"model": {"source": MINILM}, "replicas": 1, "resources": {"cpu": 1}}}
        with open(f"{work}/spec.yaml", "w") as f:
            json.dump(spec, f)
        cli(api, "deploy", "-f", f"{work}/spec.yaml", "--wait")
        replica = json.loads(cli(api, "get", "replicas", "-o", "json"))[0]
        replica, replica_pid = replica["endpoint"], replica["pid"]
        port = 18000 + os.getpid() % 1000
        cfg = f"{work}/haproxy.cfg"
        with open(cfg, "w") as f:
            f.write(cli(api, "render", "haproxy", "minilm", "--bind", f"127.0.0.1:{port}"))
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # its first health check
        targets = {"direct": f"http://{replica}", "modelship gateway": gateway, "haproxy": f"http://127.0.0.1:{port}"}
        embed = json.dumps({"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."})
        cases = [("readiness route", "/v2/models/minilm/ready", None, 1),
                 ("readiness route", "/v2/models/minilm/ready", None, 16),
                 ("embedding", "/v1/embeddings", embed, 1),
                 ("embedding", "/v1/embeddings", embed, 8)]
        rows = []
        for name, path, body, c in cases:
            runs = {t: [] for t in targets}
            for r in range(ROUNDS):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for t in order:
                    runs[t].append(load(targets[t] + path, c, body))
            med = lambda t, k: sorted(x[k] for x in runs[t])[ROUNDS // 2]
            errors = {t: sum(x["errors"] for x in runs[t]) for t in targets}
            paired = sorted(g["p50_us"] - h["p50_us"] for g, h in zip(runs["modelship gateway"], runs["haproxy"]))
            rows.append((name, c, {t: (med(t, "p50_us"), med(t, "p99_us"), med(t, "rps")) for t in targets},
                         paired[ROUNDS // 2], errors))
            print(f"  {name} c={c}: " + ", ".join(f"{t} p50 {med(t, 'p50_us')} µs p99 {med(t, 'p99_us')} µs {med(t, 'rps'):.0f} rps"
                                                   for t in targets), file=sys.stderr)
        print("| request | concurrency | direct p50 / p99 µs | gateway p50 / p99 µs | HAProxy p50 / p99 µs "
              "| added p50 gateway / HAProxy µs | gateway − HAProxy p50, paired µs | req/s direct / gateway / HAProxy |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, c, m, paired, errors in rows:
            d, g, h = m["direct"], m["modelship gateway"], m["haproxy"]
            print(f"| {name} | {c} | {d[0]} / {d[1]} | {g[0]} / {g[1]} | {h[0]} / {h[1]} | "
                  f"{g[0] - d[0]} / {h[0] - d[0]} | {paired} | {d[2]:.0f} / {g[2]:.0f} / {h[2]:.0f} |")
            if any(errors.values()):
                print(f"errors: {errors}", file=sys.stderr)
        cli(api, "delete", "minilm")
        time.sleep(2)
    finally:
        if haproxy:
            haproxy.terminate()
        up.send_signal(signal.SIGKILL)
        # The replica outlives `up` by design: stop it if `delete` did not.
        if replica_pid and os.path.exists(f"/proc/{replica_pid}"):
            os.kill(replica_pid, signal.SIGTERM)

if __name__ == "__main__":
    main()
