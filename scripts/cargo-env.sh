# Sourced by the scripts that build: one cargo target directory for the demo,
# the tests and the benchmarks, outside the checkout so a fresh clone reuses
# the last build. $BUILD is its release directory.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MODELSHIP_CACHE:-$HOME/.cache/modelship}/cargo-target}"
BUILD="$CARGO_TARGET_DIR/release"
export BUILD
