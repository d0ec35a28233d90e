#!/usr/bin/env bash
# From a fresh machine to real models answering requests: fetch the test
# models, build modelship, start the control plane and deploy
# all-MiniLM-L6-v2 (2 replicas, q8_0 behind a quality gate) and
# Qwen2.5-Coder-0.5B-Instruct (the chat model) behind its gateway on :8080.
# Ctrl-C deletes the deployments and stops the control plane.
#
#   scripts/demo.sh                              the control plane, gateway on :8080
#   scripts/demo.sh serve [minilm|qwen|smollm]   one replica without the control plane, on :8000
set -euo pipefail
cd "$(dirname "$0")/.."
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }

cache=$(scripts/fetch-models.sh)
source scripts/cargo-env.sh
cargo build --release --quiet --bin modelship
bin="$BUILD/modelship"
minilm="$cache/models/all-MiniLM-L6-v2"
smollm="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
qwen="$cache/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"

if [ "${1:-}" = "serve" ]; then
  port="${PORT:-8000}"
  case "${2:-minilm}" in
    minilm) model="$minilm"; try="curl -s localhost:$port/v1/embeddings -H 'content-type: application/json' -d '{\"input\": \"Hello, modelship\"}'" ;;
    qwen | smollm) model="${!2}"; try="curl -s localhost:$port/v1/chat/completions -H 'content-type: application/json' -d '{\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"max_tokens\": 40}'" ;;
    *) echo "usage: $0 serve [minilm|qwen|smollm]" >&2; exit 64 ;;
  esac
  echo "In another terminal:"
  echo "  $try"
  exec "$bin" serve "$model" --port "$port"
fi

demo=target/demo
mkdir -p "$demo"
cat > "$demo/minilm.yaml" <<YAML
apiVersion: modelship.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: minilm
spec:
  model:
    source: $minilm
  optimize:
    quantize: q8_0
    gate: { min_cosine: 0.999 }
  serving: { max_context: 512, max_batch_tokens: 8192 }
  resources: { memory: 1Gi }
  replicas: 2
  rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0 }
YAML
cat > "$demo/qwen.yaml" <<YAML
apiVersion: modelship.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: qwen
spec:
  model:
    source: $qwen
  serving: { max_context: 2048, max_concurrent: 4 }
  resources: { cpu: 2, memory: 2Gi }
  replicas: 1
YAML

api="http://127.0.0.1:${API_PORT:-7070}"
# Its own session: a Ctrl-C reaches this script, which deletes the
# deployments through the API before stopping the control plane.
setsid "$bin" up --data-dir "$demo/data" --api-port "${API_PORT:-7070}" --gateway-port "${GATEWAY_PORT:-8080}" &
up=$!
stop() {
  "$bin" delete minilm --api "$api" >/dev/null 2>&1 || true
  "$bin" delete qwen --api "$api" >/dev/null 2>&1 || true
  kill "$up" 2>/dev/null || true
  exit 0
}
trap stop INT TERM
until curl -sf "$api/v1/status" >/dev/null; do sleep 0.2; done
"$bin" deploy -f "$demo/minilm.yaml" --wait --api "$api"
"$bin" deploy -f "$demo/qwen.yaml" --wait --api "$api"
"$bin" get replicas --api "$api"
g="localhost:${GATEWAY_PORT:-8080}"
cat <<TXT

Both deployments answer through the gateway. In another terminal:
  curl -s $g/v1/embeddings -H 'content-type: application/json' -d '{"model": "minilm", "input": "Hello, modelship"}'
  curl -s $g/v1/chat/completions -H 'content-type: application/json' -d '{"model": "qwen", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 40, "temperature": 0}'
  MODELSHIP_API=$api $bin status minilm
The dashboard: $api/
Ctrl-C deletes both deployments and stops the control plane.
TXT
wait "$up"
