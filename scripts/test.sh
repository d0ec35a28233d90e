#!/usr/bin/env bash
# The whole test suite on a fresh machine: test models, the Python reference,
# formatting, lints, then every test in release mode (model forward passes are
# far too slow unoptimized). Builds into $CARGO_TARGET_DIR, by default a
# directory in the modelship cache (scripts/cargo-env.sh), the one
# scripts/demo.sh builds into, so a fresh clone reuses the last build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo-env.sh

command -v cargo >/dev/null || { echo "error: cargo is missing (Rust 1.95 toolchain)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is missing" >&2; exit 1; }
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }

echo "== test models"
scripts/fetch-models.sh >/dev/null
echo "== python reference"
scripts/setup-peers.sh >/dev/null
echo "== test checkpoints (written from the test models)"
scripts/make-checkpoints.sh >/dev/null
echo "== services (etcd, docker engine and swarm, registry)"
scripts/setup-services.sh
echo "== browser (headless chromium for the dashboard tests)"
scripts/setup-browser.sh

echo "== generated files"
python3 scripts/make-corpus.py --check

echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== tests"
cargo test --release --workspace
