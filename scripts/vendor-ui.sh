#!/usr/bin/env bash
# Refreshes the dashboard's one third-party library, uPlot (MIT), from its
# npm package into crates/control/ui/vendor/, checked against the sha256 of
# the files committed there: a fresh machine builds the dashboard without
# npm, and a changed package is an error here, not a silent change.
#   scripts/vendor-ui.sh            check the committed files against npm's
#   scripts/vendor-ui.sh --update   take the pinned version's files
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.6.32
declare -A sums=(
  [uPlot.iife.min.js]=19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f
  [uPlot.min.css]=df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04
)
dest=crates/control/ui/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null && tar xzf uplot-*.tgz)
for f in "${!sums[@]}"; do
  got=$(sha256sum "$work/package/dist/$f" | cut -d' ' -f1)
  [ "$got" = "${sums[$f]}" ] || { echo "error: uplot@$version's $f is $got, not ${sums[$f]}" >&2; exit 1; }
  if [ "${1:-}" = "--update" ]; then
    cp "$work/package/dist/$f" "$dest/$f"
  else
    cmp -s "$work/package/dist/$f" "$dest/$f" || { echo "error: $dest/$f differs from uplot@$version's" >&2; exit 1; }
  fi
done
[ "${1:-}" = "--update" ] && cp "$work/package/LICENSE" "$dest/uPlot.LICENSE"
echo "uplot@$version: ${!sums[*]} as published"
