"""What an open dashboard costs the gateway (issue 20): one MiniLM f32
replica behind `modelship up`'s gateway under a closed-loop embedding load,
with no dashboard, then with 1 and 10 dashboard streams reading
`/v1/watch` (server-sent events on every 2 s tick: half the overview, half
the deployment's page), then a headless Chromium showing the deployment's
page (charts drawn, its browser sharing this machine's two cores), then
with none again (the machine's drift). Also the bytes each stream carries.
Run by scripts/bench.sh (BENCH_ONLY=dashboard for this table only)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from paths import BIN, MINILM, OUT
from up import http_load, start_up

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONCURRENCY = 8


def deploy(api, work):
    spec = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "minilm"},
            "spec": {"model": {"source": MINILM}, "replicas": 1, "resources": {"cpu": 1}}}
    path = f"{work}/minilm.json"
    with open(path, "w") as f:
        json.dump(spec, f)
    subprocess.run([BIN, "deploy", "-f", path, "--wait", "--api", api], check=True, capture_output=True)


def load(gateway):
    body = json.dumps({"model": "minilm", "input": "The quick brown fox jumps over the lazy dog."})
    return http_load(f"{gateway}/v1/embeddings", CONCURRENCY, SECONDS, body)


def streams(api, work, n):
    """n curl clients reading the stream into files, past their first second."""
    procs = []
    for i in range(n):
        url = f"{api}/v1/watch" + ("?deployment=minilm" if i % 2 else "")
        out = f"{work}/stream{i}"
        procs.append((subprocess.Popen(["curl", "-sN", "-o", out, url]), out))
    time.sleep(1)
    return [(p, out, os.path.getsize(out)) for p, out in procs], time.time()


def stop(procs, since):
    """Stops the clients: the bytes per second each got since `since`."""
    took = time.time() - since
    rates = []
    for p, out, first in procs:
        p.terminate()
        p.wait()
        rates.append((os.path.getsize(out) - first) / took)
    return sum(rates) / len(rates)


def webdriver(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["value"]


def chromium(api):
    """A headless Chromium on the deployment's page; returns what stops it."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise SystemExit("chromium and chromedriver are missing: run scripts/setup-browser.sh")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            webdriver(port, "GET", "/status")
            break
        except OSError:
            time.sleep(0.1)
    session = webdriver(port, "POST", "/session", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome", "goog:chromeOptions": {"binary": shutil.which("chromium"), "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]}}}})
    sid = session["sessionId"]
    webdriver(port, "POST", f"/session/{sid}/url", {"url": f"{api}/#/d/minilm"})
    time.sleep(3)
    points = webdriver(port, "POST", f"/session/{sid}/execute/sync", {
        "script": "return document.querySelector('figure[data-chart=rps]').dataset.points", "args": []})

    def close():
        webdriver(port, "DELETE", f"/session/{sid}")
        driver.terminate()
        driver.wait()
    return close, points


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="dashboardbench-", dir=OUT)
    up, api, gateway = start_up(f"{work}/data")
    rows = []
    try:
        deploy(api, work)
        # Alternating, twice: the machine drifts by several percent over a
        # minute, more than one pair of rows can separate.
        for round in (1, 2):
            rows.append((f"no dashboard ({round})", load(gateway), None))
            for n in (1, 10):
                procs, since = streams(api, work, n)
                r = load(gateway)
                per_s = stop(procs, since)
                rows.append((f"{n} stream{'s' if n > 1 else ''} open ({round})", r, f"{per_s / 1024:.2f} KiB/s per stream"))
            close, points = chromium(api)
            try:
                rows.append((f"headless Chromium on the deployment page ({round})", load(gateway),
                             f"its charts started with {points} points"))
            finally:
                close()
        rows.append(("no dashboard (3)", load(gateway), None))
        subprocess.run([BIN, "delete", "minilm", "--api", api], check=True, capture_output=True)
    finally:
        up.send_signal(signal.SIGKILL)
    base = rows[0][1]
    print(f"| MiniLM f32, c={CONCURRENCY}, {SECONDS:.0f} s per row | gateway p50 µs | p50 vs none | p99 µs | req/s "
          "| req/s vs none | client errors | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r, note in rows:
        print(f"| {name} | {r['p50_us']} | {r['p50_us'] / base['p50_us']:.2f}× | {r['p99_us']} | {r['rps']:.0f} | "
              f"{r['rps'] / base['rps']:.2f}× | {r['errors']} | {note or ''} |")
    json.dump(rows, open(f"{OUT}/dashboard.json", "w"), indent=1)


if __name__ == "__main__":
    main()
