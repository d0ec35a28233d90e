#!/usr/bin/env bash
# From a fresh machine to a real model answering requests: fetch the test
# models, build modelship, and serve one in the foreground (Ctrl-C stops it).
#
#   scripts/demo.sh            all-MiniLM-L6-v2 embeddings on :8000
#   scripts/demo.sh smollm     SmolLM2-135M-Instruct chat on :8000
set -euo pipefail
cd "$(dirname "$0")/.."
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }

cache=$(scripts/fetch-models.sh)
cargo build --release --quiet --bin modelship
port="${PORT:-8000}"

case "${1:-minilm}" in
  minilm)
    model="$cache/models/all-MiniLM-L6-v2"
    try="curl -s localhost:$port/v1/embeddings -H 'content-type: application/json' -d '{\"input\": \"Hello, modelship\"}'" ;;
  smollm)
    model="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    try="curl -s localhost:$port/v1/chat/completions -H 'content-type: application/json' -d '{\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"max_tokens\": 40}'" ;;
  *) echo "usage: $0 [minilm|smollm]" >&2; exit 64 ;;
esac

echo "In another terminal:"
echo "  $try"
exec target/release/modelship serve "$model" --port "$port"
