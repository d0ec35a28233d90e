"""A `modelship up` on free ports and the closed-loop load against it, for the
benchmarks that measure through the control plane's gateway."""
import json
import re
import subprocess

from paths import BIN, BUILD

LOAD = f"{BUILD}/examples/http_load"


def start_up(data):
    """Starts `modelship up` on DATA; returns the process, the API and the gateway URLs."""
    proc = subprocess.Popen([BIN, "up", "--data-dir", data, "--api-port", "0", "--gateway-port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"API (http://[^,]+), gateway (http://[^,]+),", line)
        if m:
            return proc, m.group(1), m.group(2)
    raise SystemExit("modelship up did not start")


def cli(api, *args):
    return subprocess.run([BIN, *args, "--api", api], check=True, capture_output=True, text=True).stdout


def http_load(url, concurrency, seconds, body=None):
    """The http_load example's figures (p50_us, p99_us, rps, errors) for `seconds` at `concurrency`."""
    args = [LOAD, url, str(concurrency), str(seconds)] + ([body] if body else [])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
