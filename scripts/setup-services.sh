#!/usr/bin/env bash
# Debian packages of the real services the tests and benchmarks run:
#   etcd-server   service discovery tests (`up --discovery etcd://…`)
#   with --bench:
#   haproxy       the proxy peer of the gateway benchmark
# Idempotent: a command already on the PATH is not installed again.
set -euo pipefail
packages=()
command -v etcd >/dev/null || packages+=(etcd-server)
if [ "${1:-}" = "--bench" ]; then
  command -v haproxy >/dev/null || packages+=(haproxy)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "installing ${packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
