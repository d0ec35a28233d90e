#!/usr/bin/env bash
# The real services the tests and benchmarks run, from Debian packages:
#   etcd-server      service discovery tests (`up --discovery etcd://…`)
#   docker.io        the Docker engine (and a single-node Swarm) for the
#                    docker and swarm targets; dockerd is started here when
#                    no engine answers, and the node made a Swarm manager
#   docker-registry  the OCI registry `build --push` is tested against
#                    (each test starts its own on a free port)
#   with --bench:
#   haproxy          the proxy peer of the gateway benchmark
# Idempotent: what is installed is not installed again, a running engine is
# left as it is.
set -euo pipefail
cache="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
packages=()
command -v etcd >/dev/null || packages+=(etcd-server)
command -v dockerd >/dev/null || packages+=(docker.io)
command -v docker-registry >/dev/null || packages+=(docker-registry)
if [ "${1:-}" = "--bench" ]; then
  command -v haproxy >/dev/null || packages+=(haproxy)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "installing ${packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$cache"
  echo "starting dockerd (log: $cache/dockerd.log)" >&2
  setsid dockerd >"$cache/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || {
    echo "error: dockerd did not start; see $cache/dockerd.log" >&2
    tail -20 "$cache/dockerd.log" >&2
    exit 1
  }
fi
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  echo "making this node a single-node Swarm" >&2
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
fi
