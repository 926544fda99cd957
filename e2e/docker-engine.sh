# shellcheck shell=bash
# Sourced by the scripts that build images here: a Docker engine to build with. Uses the one
# that answers, else starts Debian's dockerd for the caller and stops it at `docker_engine_stop`.
# The daemon it starts changes no network setting of the host (no bridge, no iptables rules, no
# forwarding): images are built from local bases with host networking only.
#
# Environment: DOCKER (CLI, default docker), DOCKER_DATA_ROOT (where a started daemon keeps
# images, default /var/cache/imageclassifier/docker: base images survive between runs).

docker_engine_pid=""
docker_engine_log=""

docker_engine_start() { # FOLDER (removed by the caller afterwards)
  local docker=${DOCKER:-docker}
  "$docker" info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null \
    || { echo "no docker engine answers and dockerd is not installed (apt-get install docker.io)" >&2; return 1; }
  docker_engine_log=$1/dockerd.log
  echo "starting dockerd (log: $docker_engine_log)"
  # Its socket, pid file and run-time state in FOLDER: nothing is left in /run afterwards.
  export DOCKER_HOST=unix://$1/docker.sock
  dockerd --data-root "${DOCKER_DATA_ROOT:-/var/cache/imageclassifier/docker}" \
    --exec-root "$1/exec" --pidfile "$1/dockerd.pid" --host "$DOCKER_HOST" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$docker_engine_log" 2>&1 &
  docker_engine_pid=$!
  for _ in $(seq 1 150); do "$docker" info >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "dockerd did not start (log: $docker_engine_log)" >&2
  return 1
}

docker_engine_stop() {
  [ -n "$docker_engine_pid" ] || return 0
  kill -TERM "$docker_engine_pid" 2>/dev/null || true
  wait "$docker_engine_pid" 2>/dev/null || true
  docker_engine_pid=""
}
