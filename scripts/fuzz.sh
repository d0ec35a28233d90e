#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted input, on stable Rust:
# libFuzzer (libfuzzer-sys) drives the targets in fuzz/, built with the
# sanitizer-coverage passes cargo-fuzz would ask for, plus debug assertions
# and overflow checks (a wrapped integer is a finding).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all)
#
# The corpus starts from seeds made from the real test models and files
# (fuzz/make_seeds.py) and grows in $FUZZ_DIR/corpus across runs. Each
# target runs with a 2 GiB RSS bound and a 10 s bound per input (libFuzzer
# reports either as a crash); two run at a time. Prints one line per target
# (executions, their rate, corpus size, findings) and exits 1 when any
# target found something; the inputs are kept in $FUZZ_DIR/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
FUZZ_DIR="${FUZZ_DIR:-$CACHE/fuzz}"
SECONDS_EACH="${1:-60}"
shift || true
ALL=(gguf_header safetensors checkpoint_config spec http1_head chunked request_bodies chat_template)
TARGETS=("${@:-${ALL[@]}}")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")

command -v c++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++ >/dev/null; }
scripts/fetch-models.sh >/dev/null
scripts/setup-peers.sh >/dev/null
scripts/make-checkpoints.sh >/dev/null

echo "== build (instrumented, $FUZZ_DIR/target)"
export CARGO_TARGET_DIR="$FUZZ_DIR/target"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# With --target, RUSTFLAGS reach the targets' code and not build scripts or
# proc macros (which have no fuzzer runtime to link).
HOST=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --manifest-path fuzz/Cargo.toml --bins --target "$HOST"
BIN_DIR="$CARGO_TARGET_DIR/$HOST/release"

echo "== seeds (from the real models and files)"
SEEDS="$FUZZ_DIR/seeds"
rm -rf "$SEEDS"
"$CACHE/venv/bin/python" fuzz/make_seeds.py "$SEEDS"

run_one() {
    local t="$1" log="$FUZZ_DIR/logs/$1.log"
    mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/artifacts/$t" "$FUZZ_DIR/logs"
    "$BIN_DIR/$t" "$FUZZ_DIR/corpus/$t" "$SEEDS/$t" \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
        -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$log" 2>&1 || true
}

echo "== fuzzing ${#TARGETS[@]} targets, ${SECONDS_EACH} s each"
pids=()
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    pids+=($!)
    if (( ${#pids[@]} == 2 )); then wait "${pids[@]}"; pids=(); fi
done
(( ${#pids[@]} == 0 )) || wait "${pids[@]}"

found=0
total=0
printf '%-18s %12s %10s %8s %s\n' target executions "per s" corpus findings
for t in "${TARGETS[@]}"; do
    log="$FUZZ_DIR/logs/$t.log"
    runs=$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n}' "$log")
    secs=$(awk '/^stat::average_exec_per_sec:/ {n = $2} END {print n}' "$log")
    corpus=$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)
    crashes=$(find "$FUZZ_DIR/artifacts/$t" -type f | wc -l)
    if [[ -z "$runs" ]]; then
        echo "$t: no final statistics; see $log" >&2
        tail -n 20 "$log" >&2
        found=1
        continue
    fi
    total=$((total + runs))
    (( crashes == 0 )) || found=1
    printf '%-18s %12d %10d %8d %d\n' "$t" "$runs" "$secs" "$corpus" "$crashes"
done
echo "total executions: $total"
if (( found )); then
    echo "findings kept in $FUZZ_DIR/artifacts (rerun one: $BIN_DIR/TARGET FILE)" >&2
    exit 1
fi
