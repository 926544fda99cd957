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
# What dockerd writes outside its folders (its trust key, its containerd's plugin folder),
# removed at stop when it was not there before.
docker_engine_leftovers=()

docker_engine_start() { # FOLDER (removed by the caller afterwards)
  local docker=${DOCKER:-docker}
  "$docker" info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null \
    || { echo "no docker engine answers and dockerd is not installed (apt-get install docker.io)" >&2; return 1; }
  docker_engine_log=$1/dockerd.log
  echo "starting dockerd (log: $docker_engine_log)"
  [ -e /etc/docker ] || docker_engine_leftovers+=(/etc/docker)
  [ -e /etc/docker/key.json ] || docker_engine_leftovers+=(/etc/docker/key.json)
  # The containerd dockerd starts for itself keeps its plugins' folder there by default, and
  # dockerd makes its plugin socket folder in /run/docker whatever its exec root.
  [ -e /opt/containerd ] || docker_engine_leftovers+=(/opt/containerd)
  [ -e /run/docker ] || docker_engine_leftovers+=(/run/docker)
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
  for _ in $(seq 1 100); do kill -0 "$docker_engine_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$docker_engine_pid" 2>/dev/null || true
  wait "$docker_engine_pid" 2>/dev/null || true
  docker_engine_pid=""
  local path
  for path in "${docker_engine_leftovers[@]}"; do rm -rf "$path"; done
  docker_engine_leftovers=()
}
