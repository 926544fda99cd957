#!/usr/bin/env bash
# Images for the local cluster, built with a Docker engine (started for the occasion if none
# answers, see e2e/docker-engine.sh) and loaded into the node's containerd: no registry is
# involved, and kubelet never pulls.
#
#   e2e/cluster/images.sh cluster   # the cluster's own: pause, and Prometheus at the release
#                                   # manifests/ names (programs from e2e/cluster/build.sh)
#   e2e/cluster/images.sh project   # imageclassifier/<component>:dev from the Dockerfile, with
#                                   # binaries built on this host (make images-from-host)
#
# Environment: BIN (the cluster programs, default /var/cache/imageclassifier/cluster/bin),
# MODELS (the model the inference image carries, default models), DOCKER (CLI).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN:-/var/cache/imageclassifier/cluster/bin}
models=${MODELS:-$root/models}
# Debian's 20.10 CLI builds with BuildKit by itself; a newer CLI needs buildx for that.
if [ -z "${DOCKER:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then DOCKER=docker; else DOCKER=/usr/bin/docker; fi
fi
export DOCKER
say() { echo "cluster-images: $*"; }
fail() { echo "cluster-images: $*" >&2; exit 1; }
[ -x "$DOCKER" ] || command -v "$DOCKER" >/dev/null || fail "needs the docker CLI (apt-get install docker.io)"

# shellcheck source=e2e/docker-engine.sh
. "$root/e2e/docker-engine.sh"
work=$(mktemp -d)
trap 'docker_engine_stop; rm -rf "$work"' EXIT
docker_engine_start "$work" || fail "no docker engine"
ONLY=runtime "$root/e2e/offline-base-images.sh"

# docker save | ctr import, into the namespace kubelet's CRI uses.
load() { # IMAGE...
  local image
  for image in "$@"; do
    "$DOCKER" save "$image" | "$root/e2e/local-cluster.sh" load
  done
  say "loaded $*"
}

# The release manifests/prometheus names, so the local overlay runs the same Prometheus.
prometheus_tag() {
  kubectl kustomize "$root/e2e/cluster/manifests" \
    | awk '$1 == "image:" && $2 ~ /prometheus/ {split($2, parts, ":"); print parts[2]; exit}'
}

cluster_images() {
  for program in pause prometheus; do
    [ -x "$bin/$program" ] || fail "$bin/$program is missing: run e2e/cluster/build.sh"
  done
  local tag
  tag=$(prometheus_tag)
  [ "$("$bin/prometheus" --version 2>&1 | awk 'NR == 1 {print $3}')" = "${tag#v}" ] \
    || fail "the Prometheus built by e2e/cluster/build.sh is not $tag, the release the manifests name"
  cp "$bin/pause" "$bin/prometheus" "$work/"
  printf '%s\n' 'FROM scratch' 'COPY pause /pause' 'USER 65535:65535' 'ENTRYPOINT ["/pause"]' \
    >"$work/Dockerfile.pause"
  printf '%s\n' 'FROM debian:bookworm-slim' 'COPY prometheus /bin/prometheus' 'USER 65534:65534' \
    'EXPOSE 9090' 'ENTRYPOINT ["/bin/prometheus"]' >"$work/Dockerfile.prometheus"
  local pause
  pause=$("$root/e2e/local-cluster.sh" pause-image)
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -f "$work/Dockerfile.pause" -t "$pause" "$work" >/dev/null
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -f "$work/Dockerfile.prometheus" \
    -t "imageclassifier.local/prometheus:$tag" "$work" >/dev/null
  load "$pause" "imageclassifier.local/prometheus:$tag"
}

project_images() {
  make -C "$root" images-from-host DOCKER="$DOCKER" MODELS="$models"
  load imageclassifier/inference:dev imageclassifier/dispatcher:dev imageclassifier/metrics-adapter:dev
}

case "${1:-}" in
  cluster) cluster_images ;;
  project) project_images ;;
  *) fail "usage: $0 cluster|project" ;;
esac
