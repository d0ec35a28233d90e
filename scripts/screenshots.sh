#!/usr/bin/env bash
# Refreshes the dashboard's screenshots in docs/img from its browser test
# (a real MiniLM deployment, a minute of traffic for the charts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo-env.sh
scripts/fetch-models.sh >/dev/null
scripts/setup-browser.sh
mkdir -p docs/img
MODELSHIP_SCREENSHOTS="$PWD/docs/img" cargo test --release -p modelship --test dashboard
ls -l docs/img
