#!/usr/bin/env bash
# Fresh machine → first answer: README command 1 (scripts/demo.sh) from an
# empty modelship cache (models, Python venv, cargo target) and an empty
# cargo registry, timed until the chat model answers through the gateway.
# Needs ~5 GB in SCRATCH (default ~/.cache/modelship-fresh), removed after.
#   scripts/bench/fresh-machine.sh [SCRATCH]
set -uo pipefail
cd "$(dirname "$0")/../.."
scratch="${1:-$HOME/.cache/modelship-fresh}"
if [ -n "$(ls -A "$scratch" 2>/dev/null)" ]; then
  echo "error: $scratch is not empty (it is removed after the run)" >&2; exit 64
fi
if curl -s -o /dev/null localhost:8080; then
  echo "error: something already answers on :8080" >&2; exit 64
fi
mkdir -p "$scratch"
export MODELSHIP_CACHE="$scratch/cache" CARGO_HOME="$scratch/cargo-home"
unset CARGO_TARGET_DIR BUILD
start=$(date +%s)
setsid scripts/demo.sh > "$scratch/demo.log" 2>&1 &
demo=$!
question='{"model": "qwen", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 40, "temperature": 0}'
until curl -sf localhost:8080/v1/chat/completions -H 'content-type: application/json' -d "$question" \
    > "$scratch/answer.json" 2>/dev/null; do
  sleep 2
  kill -0 "$demo" 2>/dev/null || { echo "demo.sh exited:" >&2; tail -20 "$scratch/demo.log" >&2; exit 1; }
done
echo "fresh machine → first answer: $(( $(date +%s) - start )) s"
cat "$scratch/answer.json"; echo
kill -INT -- "-$demo"; sleep 8; kill -- "-$demo" 2>/dev/null
rm -rf "$scratch"
