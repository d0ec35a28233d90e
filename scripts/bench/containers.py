"""Images and targets (issue 6): the image's layer sizes, how long a build
takes (cold: optimizing too; warm: the optimized model cached), how long
`docker load` of the archive, a push to a local registry (Debian's
docker-registry) and a `docker pull` back take, and the time from `deploy`
to the first successful response through the gateway on each target (local
processes, Docker containers, a single-node Swarm), with the pipeline's
stages. Each timing is the median of ROUNDS runs.
Run by scripts/bench.sh (BENCH_ONLY=containers for this table only)."""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from gateway import start_up
from paths import BIN, MINILM, OUT

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# Deploys per target: the first, and these many again.
AGAIN = int(os.environ.get("BENCH_AGAIN", "3"))


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def spec(d, name, target, extra=""):
    path = os.path.join(d, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"""apiVersion: modelship.dev/v1alpha1
kind: ModelDeployment
metadata: {{ name: {name} }}
spec:
  model: {{ source: {MINILM}, task: embeddings }}
  optimize: {{ quantize: q8_0 }}
  resources: {{ cpu: 1, memory: 1Gi }}
  target: {target}
{extra}""")
    return path


def build(d, data, path, *flags):
    return json.loads(run(BIN, "build", "-f", path, "--data-dir", data, *flags, "-o", "json"))


def rmi(ref):
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(d):
    port = free_port()
    cfg = os.path.join(d, "registry.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("docker-registry did not start")


def first_response(gateway, name, deadline=300):
    body = json.dumps({"model": name, "input": "hello"}).encode()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            req = urllib.request.Request(f"{gateway}/v1/embeddings", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{name}: no response through the gateway")


def deploy_to_first_response(d, api, gateway, target, i):
    name = f"bench-{target}-{i}"
    path = spec(d, name, target)
    t = time.perf_counter()
    deploy = subprocess.Popen([BIN, "deploy", "-f", path, "--api", api, "--wait"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_response(gateway, name)
    total = time.perf_counter() - t
    deploy.wait()
    runs = json.loads(run(BIN, "get", "runs", "--api", api, "-o", "json"))
    mine = [r for r in runs if r["deployment"] == name][-1]
    stages = {s["name"]: s["duration_ms"] / 1000 for s in mine["stages"]}
    history = json.loads(run(BIN, "history", name, "--api", api, "-o", "json"))
    image = history["revisions"][-1].get("image")
    run(BIN, "delete", name, "--api", api)
    # Replicas outlive the control plane: wait until they are gone.
    for _ in range(600):
        replicas = json.loads(run(BIN, "get", "replicas", "--api", api, "-o", "json"))
        if not any(r["deployment"] == name for r in replicas):
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"{name}: replicas left after delete")
    return total, stages, image


def main():
    shutil.which("docker") or sys.exit("docker is missing: run scripts/setup-services.sh")
    os.makedirs(OUT, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # Builds: cold (fresh cache: optimize + package) and warm.
        cold, warm, cached = [], [], []
        for i in range(ROUNDS):
            data = os.path.join(d, f"cold{i}")
            t, built = timed(lambda: build(d, data, spec(d, "img", "docker"), "--oci-dir", os.path.join(d, f"oci{i}")))
            cold.append(t)
            t, _ = timed(lambda: build(d, data, spec(d, "img", "docker"), "--oci-dir", os.path.join(d, f"oci{i}w")))
            warm.append(t)
            t, _ = timed(lambda: build(d, data, spec(d, "img", "docker"), "--oci-dir", os.path.join(d, f"oci{i}w")))
            cached.append(t)
        sizes = {l["role"]: l["size"] for l in built["layers"]}
        data = os.path.join(d, "cold0")

        # docker load of the archive, cold (image absent).
        archive = os.path.join(d, "img.tar")
        loads = []
        for _ in range(ROUNDS):
            built = build(d, data, spec(d, "img", "docker"), "--docker-archive", archive)
            rmi(built["reference"])
            t, _ = timed(lambda: run("docker", "load", "-i", archive))
            loads.append(t)
        archive_size = os.path.getsize(archive)
        # Unpacked size as Docker counts it.
        unpacked = int(run("docker", "image", "inspect", "--format", "{{.Size}}", built["reference"]))
        rmi(built["reference"])

        # Registry: first push, repeated push (every blob already there),
        # pull into an engine without the image.
        reg, addr = start_registry(d)
        try:
            pushes, repushes, pulls = [], [], []
            for i in range(ROUNDS):
                ref = f"{addr}/img{i}:v1"
                t, _ = timed(lambda: build(d, data, spec(d, "img", "docker"), "--push", ref))
                pushes.append(t)
                t, _ = timed(lambda: build(d, data, spec(d, "img", "docker"), "--push", ref))
                repushes.append(t)
                t, _ = timed(lambda: run("docker", "pull", ref))
                pulls.append(t)
                rmi(ref)
        finally:
            reg.kill()

        # Deploy → first response through the gateway, per target, each on
        # a fresh control plane with the optimized model cached, the image
        # not yet in the engine.
        targets = {}
        for target in ["local", "docker", "swarm"]:
            data = os.path.join(d, f"up-{target}")
            shutil.copytree(os.path.join(d, "cold0", "artifacts"), os.path.join(data, "artifacts"))
            proc, api, gateway = start_up(data)
            try:
                results = []
                for i in range(1 + AGAIN):
                    total, stages, image = deploy_to_first_response(d, api, gateway, target, i)
                    results.append((total, stages))
                    if image:
                        time.sleep(2)
                        rmi(image.split("@")[0])
                targets[target] = results
            finally:
                proc.terminate()
                proc.wait()

    med = statistics.median
    mib = lambda b: f"{b / 2**20:.2f} MiB"
    lines = [
        "| image (MiniLM q8_0) | size |",
        "|---|---:|",
        f"| runtime layer (gzip) | {mib(sizes['runtime'])} |",
        f"| model layer (gzip) | {mib(sizes['model'])} |",
        f"| deployment layer (gzip) | {sizes['deployment']} B |",
        f"| docker archive | {mib(archive_size)} |",
        f"| unpacked in Docker | {mib(unpacked)} |",
        "",
        f"| step (median of {ROUNDS}) | seconds |",
        "|---|---:|",
        f"| build, cold (optimize q8_0 + package) | {med(cold):.2f} |",
        f"| build, optimized model cached (layers compressed) | {med(warm):.2f} |",
        f"| build, optimized model and layers cached | {med(cached):.2f} |",
        f"| `docker load` of the archive | {med(loads):.2f} |",
        f"| `build --push` to an empty registry | {med(pushes):.2f} |",
        f"| `build --push` again (all blobs present) | {med(repushes):.2f} |",
        f"| `docker pull` from the registry | {med(pulls):.2f} |",
        "",
        "Deploy → first response through the gateway; first: a new control plane's first deploy of the"
        " target (image layers built); again: the median of the later ones (layers reused from the"
        " layer cache); the image is never in the engine beforehand.",
        "",
        "| target | first | again | package, first | package, again | rollout (again) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target, results in targets.items():
        first, later = results[0], results[1:]
        again = med([r[0] for r in later])
        pkg = lambda rs: med([r[1].get("package", 0.0) for r in rs])
        p_first = f"{first[1].get('package', 0.0):.2f}" if target != "local" else "—"
        p_again = f"{pkg(later):.2f}" if target != "local" else "—"
        lines.append(f"| {target} | {first[0]:.2f} s | {again:.2f} s | {p_first} | {p_again} | "
                     f"{med([r[1].get('rollout', 0.0) for r in later]):.2f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(OUT, "containers.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
