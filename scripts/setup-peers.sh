#!/usr/bin/env bash
# Python tools for reference implementations and peers, in a virtual
# environment under the modelship cache (default ~/.cache/modelship/venv):
#   numpy, tokenizers, safetensors  independent BERT reference (tests)
#   gguf                            llama.cpp's GGUF reader and reference
#                                   quantizer (tests compare our blocks)
#   kubernetes-validate             Kubernetes 1.33 JSON schemas: tests check
#                                   what `render kubernetes` writes
#   openai, langchain-openai        real OpenAI clients (tests/clients/)
#   llama-cpp-python (from source)  llama.cpp itself: loads what we write
#                                   (tests), generation and quantization peer,
#                                   the oracle of tests/fixtures/ (~10 min once)
#   with --bench:
#   onnxruntime                     embedding peer
# Idempotent: a package already installed at the pinned version is not reinstalled.
set -euo pipefail

CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
VENV="$CACHE/venv"
BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

need() { # "name==version" ...: install what is missing
  local missing=()
  for spec in "$@"; do
    "$VENV/bin/python" - "$spec" <<'PY' || missing+=("$spec")
import sys, importlib.metadata as md
name, version = sys.argv[1].split("==")
try:
    sys.exit(0 if md.version(name) == version else 1)
except md.PackageNotFoundError:
    sys.exit(1)
PY
  done 2>/dev/null
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    "${PIP[@]}" install "${missing[@]}"
  fi
}

need numpy==2.4.6 tokenizers==0.23.3 safetensors==0.8.0 gguf==0.19.0 kubernetes-validate==1.37.0
need openai==3.57.0 langchain-openai==1.7.4
# The native build dies with "Illegal instruction" here: the CPU advertises AMX
# that the virtual machine does not enable. Build for a fixed, portable ISA.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
need llama-cpp-python==0.3.36

if [ "$BENCH" = 1 ]; then
  need onnxruntime==1.32.0
fi
echo "$VENV"
