#!/usr/bin/env bash
# `make e2e`: build the images into minikube, deploy the system, drive load through the
# dispatcher, and check that the native HPA scales the ResNet50 pods up on request rate (served by
# our metrics adapter) and back down when the load stops. Exit code: 0 pass, 1 fail.
#
#   make e2e                          # minikube (started by `make cluster` if needed)
#   E2E_CONTEXT=my-cluster make e2e   # any cluster whose nodes can run the images you pushed
#
# Environment: E2E_CONTEXT (kubectl context; default: minikube), MODELS (default models; `make
# model` fills it when empty), PEAK (req/s, default 24), SCALE_UP_WITHIN (s, default 240),
# SCALE_DOWN_WITHIN (s, default 300), OUT (folder for the loadgen report and plot, default e2e-out).
# The load itself is e2e/loadtest.sh (`make loadtest`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
peak=${PEAK:-24}
up_within=${SCALE_UP_WITHIN:-240}
down_within=${SCALE_DOWN_WITHIN:-300}
out=${OUT:-$root/e2e-out}
ns=imageclassifier
mkdir -p "$out"

say() { echo "e2e: $*"; }
need() { command -v "$1" >/dev/null || { echo "e2e: needs $1 ($2)" >&2; exit 1; }; }
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need cargo "https://rustup.rs"

context=${E2E_CONTEXT:-}
if [ -z "$context" ]; then
  need minikube "https://minikube.sigs.k8s.io/docs/start/"
  make cluster
  context=minikube
  # Build straight into minikube's container engine: no registry involved.
  eval "$(minikube docker-env)"
fi
k() { kubectl --context "$context" "$@"; }

dump() {
  echo "e2e: FAILED — state for diagnosis:" >&2
  k -n "$ns" get pods,hpa -o wide >&2 || true
  k -n "$ns" describe hpa inference >&2 || true
  k -n "$ns" logs deploy/metrics-adapter --tail=50 >&2 || true
  k -n "$ns" get events --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2 || true
  [ ! -f "$out/loadgen.log" ] || tail -n 30 "$out/loadgen.log" >&2
}
forward_pid=""
cleanup() {
  local status=$?
  if [ -n "$forward_pid" ]; then kill "$forward_pid" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then dump; fi
  exit "$status"
}
trap cleanup EXIT

# The inference image carries the model: fetch and import it first when it is not there yet.
models=${MODELS:-models}
if ! ls "$models"/*.json >/dev/null 2>&1; then
  say "no model in $models/: make model"
  make model MODELS="$models"
fi
say "building images and the loadgen binary"
make images MODELS="$models"
cargo build --release -p loadgen
loadgen=${CARGO_TARGET_DIR:-$root/target}/release/loadgen

say "deploying (kubectl apply -k manifests/)"
k apply -k manifests/
for deployment in prometheus inference dispatcher metrics-adapter; do
  k -n "$ns" rollout status "deploy/$deployment" --timeout=5m
done
k wait --for=condition=Available apiservice/v1beta2.custom.metrics.k8s.io --timeout=3m

k -n "$ns" port-forward svc/dispatcher 18080:8080 >"$out/port-forward.log" 2>&1 &
forward_pid=$!
for _ in $(seq 1 50); do curl -fs localhost:18080/readyz >/dev/null 2>&1 && break; sleep 0.2; done
target=http://localhost:18080/v1/classify

# The request counter has no series before the first request: warm up, then check what the HPA
# will read, the way it reads it.
say "warm-up load, then the custom metrics API"
"$loadgen" --target "$target" --rate 2 --duration 20s --quiet >/dev/null
metric="/apis/custom.metrics.k8s.io/v1beta2/namespaces/$ns/pods/*/inference_requests_per_second"
for attempt in $(seq 1 30); do
  if k get --raw "$metric" 2>/dev/null | grep -q '"MetricValueList"'; then break; fi
  [ "$attempt" = 30 ] && { echo "e2e: the adapter never served $metric" >&2; exit 1; }
  sleep 4
done
k get --raw "$metric"; echo

say "load: ramp to $peak req/s, hold, stop; watching deployment/inference"
started=$(date +%s)
LOADGEN="$loadgen" TARGET="$target" E2E_CONTEXT="$context" PEAK="$peak" HOLD="$up_within" OUT="$out" \
  e2e/loadtest.sh >"$out/loadgen.log" 2>&1 &
load_pid=$!
max_desired=1
while kill -0 "$load_pid" 2>/dev/null; do
  desired=$(k -n "$ns" get hpa inference -o jsonpath='{.status.desiredReplicas}' 2>/dev/null || echo 0)
  [ "${desired:-0}" -gt "$max_desired" ] && max_desired=$desired
  sleep 5
done
wait "$load_pid" || true
ready=$(k -n "$ns" get deploy inference -o jsonpath='{.status.readyReplicas}')
say "scale-up: HPA desired up to $max_desired, $ready ready $(( $(date +%s) - started ))s after the load started"
[ "$max_desired" -ge 3 ] || { echo "e2e: the HPA never asked for 3 or more replicas" >&2; exit 1; }
[ "${ready:-0}" -ge 3 ] || { echo "e2e: fewer than 3 inference pods became ready" >&2; exit 1; }

say "load stopped; waiting for the scale-down (stabilization 60 s, then -50 %/30 s)"
deadline=$(( $(date +%s) + down_within ))
while :; do
  desired=$(k -n "$ns" get hpa inference -o jsonpath='{.status.desiredReplicas}')
  [ "$desired" -lt "$max_desired" ] && break
  [ "$(date +%s)" -gt "$deadline" ] && { echo "e2e: no scale-down within ${down_within}s" >&2; exit 1; }
  sleep 10
done

k -n "$ns" get hpa inference
tail -n 25 "$out/loadgen.log"
say "PASS — peak $max_desired replicas; load report $out/run.json, plot $out/run.png"
