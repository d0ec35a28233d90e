#!/usr/bin/env bash
# Hugging Face checkpoint directories (config.json, safetensors, tokenizer files)
# for the safetensors loader tests, written from the cached GGUF test models by
# scripts/reference/gguf_to_hf.py (run scripts/fetch-models.sh and
# scripts/setup-peers.sh first):
#   $CACHE/models/hf/SmolLM2-135M-Instruct-f32            f32, one file
#   $CACHE/models/hf/SmolLM2-135M-Instruct-bf16           bf16, 3 shards
#   $CACHE/models/hf/Qwen2.5-Coder-0.5B-Instruct-bf16     bf16, 2 shards
#   $CACHE/models/hf/gemma-3-270m-bf16                     bf16, SentencePiece tokenizer.model
#   $CACHE/models/hf/tiny-encoders/*                       random-weight encoders and
#                                                          classifiers (scripts/reference/tiny_encoders.py)
#
#   MODELSHIP_CACHE   cache root (default ~/.cache/modelship)
#
# Idempotent: a directory is complete once it exists (the converter renames it
# into place); it is reused while its .source stamp (the GGUF's size and mtime,
# the converter's checksum and the options) still matches, else rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
PY="$CACHE/venv/bin/python"
OUT="$CACHE/models/hf"
CONVERTER=scripts/reference/gguf_to_hf.py
mkdir -p "$OUT"

checkpoint() { # NAME GGUF DTYPE SHARDS
  local dir="$OUT/$1" gguf="$CACHE/models/$2" stamp
  [ -f "$gguf" ] || { echo "error: $gguf is missing (run scripts/fetch-models.sh)" >&2; exit 1; }
  stamp="$(stat -c '%s %Y' "$gguf") $(sha256sum "$CONVERTER" | cut -d' ' -f1) --dtype $3 --shards $4"
  if [ -d "$dir" ] && [ "$(cat "$dir/.source" 2>/dev/null)" = "$stamp" ]; then
    echo "reused  $dir"
    return
  fi
  "$PY" "$CONVERTER" "$gguf" "$dir" --dtype "$3" --shards "$4"
  echo "$stamp" > "$dir/.source"
  echo "written $dir ($(du -sh "$dir" | cut -f1))"
}

checkpoint SmolLM2-135M-Instruct-f32 SmolLM2-135M-Instruct.Q4_1.gguf f32 1
checkpoint SmolLM2-135M-Instruct-bf16 SmolLM2-135M-Instruct.Q4_1.gguf bf16 3
checkpoint Qwen2.5-Coder-0.5B-Instruct-bf16 Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf bf16 2
checkpoint gemma-3-270m-bf16 gemma-3-270m.Q4_K_M.gguf bf16 1

# Random-weight encoders (RoBERTa, XLM-RoBERTa, MPNet; rerankers, classifiers),
# rewritten whenever the script changes.
TINY="$OUT/tiny-encoders"
TINY_SCRIPT=scripts/reference/tiny_encoders.py
tiny_stamp="$(sha256sum "$TINY_SCRIPT" | cut -d' ' -f1)"
if [ "$(cat "$TINY/.source" 2>/dev/null)" = "$tiny_stamp" ]; then
  echo "reused  $TINY"
else
  for m in all-MiniLM-L6-v2 all-mpnet-base-v2; do
    [ -d "$CACHE/models/$m" ] || { echo "error: $CACHE/models/$m is missing (run scripts/fetch-models.sh)" >&2; exit 1; }
  done
  rm -rf "$TINY"
  "$PY" "$TINY_SCRIPT" "$CACHE/models/all-MiniLM-L6-v2" "$CACHE/models/all-mpnet-base-v2" "$TINY"
  echo "$tiny_stamp" > "$TINY/.source"
  echo "written $TINY ($(du -sh "$TINY" | cut -f1))"
fi
