#!/usr/bin/env bash
# Container smoke test (`make containers`): the local stack of e2e/local-stack.sh, but every
# component runs from its image — Prometheus (Debian's, in a Debian-based image), three inference
# containers, the dispatcher, the adapter and loadgen — with host networking (everything on
# 127.0.0.1), as non-root and with a read-only root filesystem. Starts dockerd if none answers and
# makes the base images if they are missing (e2e/offline-base-images.sh); removes every
# container it started, and the daemon if it started it.
#
# Environment: DOCKER (CLI, default docker), IMAGES_FROM=host|source (default host: runtime
# images from binaries built here, `make images-from-host`; source: `make images`), MODELS
# (made with `make model` when empty), OFFLINE (1: that model has random weights, no download),
# and what e2e/local-stack.sh reads (RATE, DURATION, KEEP).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
docker=${DOCKER:-docker}
models=${MODELS:-$root/models}
export DOCKER=$docker
fail() { echo "containers: FAIL: $*" >&2; exit 1; }

# shellcheck source=e2e/docker-engine.sh
. "$root/e2e/docker-engine.sh"
wrappers=$(mktemp -d)
cleanup() {
  "$docker" ps -q --filter label=imageclassifier-smoke | xargs -r "$docker" rm -f >/dev/null 2>&1 || true
  docker_engine_stop
  rm -rf "$wrappers"
}
trap cleanup EXIT

docker_engine_start "$wrappers" || fail "no docker engine"

# The inference image carries the model: make the default one first when there is none, as
# `make e2e` does (OFFLINE=1: ResNet50 with random weights, no download).
if ! ls "$models"/*.json >/dev/null 2>&1; then
  echo "containers: no model in $models/: make model${OFFLINE:+ OFFLINE=$OFFLINE}"
  make -C "$root" model MODELS="$models" ${OFFLINE:+OFFLINE="$OFFLINE"}
fi

case "${IMAGES_FROM:-host}" in
  host) ONLY=runtime "$root/e2e/offline-base-images.sh"; make -C "$root" images-from-host DOCKER="$docker" ;;
  source) "$root/e2e/offline-base-images.sh"; make -C "$root" images DOCKER="$docker" ;;
  *) fail "IMAGES_FROM is host or source" ;;
esac
if ! "$docker" image inspect imageclassifier/prometheus:dev >/dev/null 2>&1; then
  printf '%s\n' 'FROM debian:bookworm-slim' \
    'RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*' \
    'USER 65534:65534' 'ENTRYPOINT ["/usr/bin/prometheus"]' \
    | DOCKER_BUILDKIT=1 "$docker" build --network host -q -t imageclassifier/prometheus:dev - >/dev/null
fi

for image in inference dispatcher metrics-adapter loadgen; do
  user=$("$docker" image inspect -f '{{.Config.User}}' "imageclassifier/$image:dev")
  [ "$user" = 65532:65532 ] || fail "imageclassifier/$image:dev runs as '$user', not 65532"
done

# Each component is a wrapper that runs its image in the foreground (docker run forwards
# SIGTERM, so the local stack's shutdown checks apply to the containers).
for image in inference dispatcher metrics-adapter loadgen prometheus; do
  cat >"$wrappers/$image" <<EOF
#!/bin/sh
exec "$docker" run --rm --network host --read-only --label imageclassifier-smoke=1 \\
  -v /tmp:/tmp -v "$models:$models:ro" -v "$root/manifests:$root/manifests:ro" \\
  imageclassifier/$image:dev "\$@"
EOF
  chmod +x "$wrappers/$image"
done

echo "containers: running the local stack from the images"
PATH="$wrappers:$PATH" BIN="$wrappers" MODELS="$models" SHARED_WORK=1 "$root/e2e/local-stack.sh"
echo "containers: PASS"
