#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md: modelship against ONNX Runtime,
# llama.cpp and HAProxy, measured in the same run on the same threads.
#   BENCH_THREADS (default 2), BENCH_SECONDS per throughput point (default 15),
#   BENCH_REPEATS per quantization timing (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(scripts/fetch-models.sh)
source scripts/cargo-env.sh
scripts/setup-peers.sh --bench >/dev/null
scripts/make-checkpoints.sh >/dev/null
scripts/setup-services.sh --bench
cargo build --release --quiet --bin modelship --example bench_generate
cargo build --release --quiet -p modelship-gateway --example http_load
# BENCH_ONLY=generate: only the decoder families against llama.cpp;
# BENCH_ONLY=speed: only the quantization throughput table; =quality: only
# the quantization quality tables; =memory: only
# the estimate-vs-RSS table; =gateway: only the proxy table; =containers:
# only the image and target table; =openai: only the schema, penalty and
# tool-prompt costs; =cold: only the scale-to-zero table; =encoders: only
# MPNet, rerank and ONNX Runtime's MiniLM; =shadow: only the cost of shadow
# traffic; =dashboard: only what an open dashboard costs the gateway;
# =structured: structured pruning and dropped layers against the original.
case "${BENCH_ONLY:-}" in
  cold) exec "$cache/venv/bin/python" scripts/bench/cold.py ;;
  encoders) exec "$cache/venv/bin/python" scripts/bench/encoders.py ;;
  shadow) exec "$cache/venv/bin/python" scripts/bench/shadow.py ;;
  dashboard) scripts/setup-browser.sh; exec "$cache/venv/bin/python" scripts/bench/dashboard.py ;;
  containers) exec "$cache/venv/bin/python" scripts/bench/containers.py ;;
  memory) exec "$cache/venv/bin/python" scripts/bench/memory.py ;;
  generate) exec "$cache/venv/bin/python" scripts/bench/run.py ;;
  openai) exec "$cache/venv/bin/python" scripts/bench/openai.py ;;
  gateway) exec "$cache/venv/bin/python" scripts/bench/gateway.py ;;
  structured) exec "$cache/venv/bin/python" scripts/bench/structured.py ;;
  speed | quality) exec "$cache/venv/bin/python" scripts/bench/quantize.py ;;
esac
"$cache/venv/bin/python" scripts/bench/run.py
"$cache/venv/bin/python" scripts/bench/quantize.py
"$cache/venv/bin/python" scripts/bench/memory.py
"$cache/venv/bin/python" scripts/bench/openai.py
"$cache/venv/bin/python" scripts/bench/gateway.py
"$cache/venv/bin/python" scripts/bench/containers.py
"$cache/venv/bin/python" scripts/bench/cold.py
"$cache/venv/bin/python" scripts/bench/encoders.py
"$cache/venv/bin/python" scripts/bench/shadow.py
"$cache/venv/bin/python" scripts/bench/structured.py
scripts/setup-browser.sh
"$cache/venv/bin/python" scripts/bench/dashboard.py
cargo run --release --quiet -p modelship-planner --example place_bench
