#!/usr/bin/env bash
# `make e2e`: build the images into a cluster, deploy the system, drive load through the
# dispatcher, and check that the native HPA scales the ResNet50 pods up on request rate (served by
# our metrics adapter, read through the apiserver's aggregation layer and discovery) and back
# down when the load falls. Exit code: 0 pass, 1 fail.
#
#   make e2e                          # minikube (started by `make cluster` if needed)
#   E2E_CONTEXT=my-cluster make e2e   # any cluster whose nodes can run the images you pushed
#   E2E_CLUSTER=local make e2e        # the project's own single-node cluster (e2e/local-cluster.sh),
#                                     # built from upstream sources on this machine; what CI runs
#
# Environment: E2E_CLUSTER (minikube or local, default minikube), E2E_CONTEXT (kubectl context for
# another cluster), MODELS (default models; filled when empty: `make model`, or on the local
# cluster `make model OFFLINE=1`), PEAK (req/s; default 24, local 8), LOW (local only: req/s of
# the scale-down phase, default 2), HOLD (s at each level; default 240, local 150),
# SCALE_DOWN_WITHIN (s, default 300), OUT (folder for the report, plot and timeline, default
# e2e-out). The load itself is e2e/loadtest.sh (`make loadtest`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cluster=${E2E_CLUSTER:-minikube}
down_within=${SCALE_DOWN_WITHIN:-300}
out=${OUT:-$root/e2e-out}
ns=imageclassifier
mkdir -p "$out"

say() { echo "e2e: $*"; }
fail() { echo "e2e: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "needs $1 ($2)"; }
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need cargo "https://rustup.rs"
need python3 "your distribution's python3"

models=${MODELS:-models}
case "$cluster" in
  minikube)
    peak=${PEAK:-24}
    hold=${HOLD:-240}
    # A 30 s ramp: one pod cannot take 24 req/s while the others start.
    profile=${PROFILE:-30s:$peak,${hold}s:$peak}
    manifests=manifests
    context=${E2E_CONTEXT:-}
    if [ -z "$context" ]; then
      need minikube "https://minikube.sigs.k8s.io/docs/start/"
      make cluster
      context=minikube
      # Build straight into minikube's container engine: no registry involved.
      eval "$(minikube docker-env)"
    fi
    ;;
  local)
    [ -z "${E2E_CONTEXT:-}" ] || fail "E2E_CONTEXT names another cluster; unset it for E2E_CLUSTER=local"
    peak=${PEAK:-8}
    low=${LOW:-2}
    hold=${HOLD:-150}
    # A step up (the HPA's reaction to a step is measured), then a step down to a lighter load
    # that keeps flowing while the HPA removes pods (no request may fail then).
    profile=${PROFILE:-1s:$peak,${hold}s:$peak,1s:$low,${hold}s:$low}
    manifests=e2e/cluster/manifests
    say "starting the local cluster (make local-cluster)"
    make local-cluster
    eval "$(e2e/local-cluster.sh env)"
    context=imageclassifier-local
    ;;
  *) fail "E2E_CLUSTER is minikube or local, not '$cluster'" ;;
esac
k() { kubectl --context "$context" "$@"; }

dump() {
  echo "e2e: FAILED — state for diagnosis:" >&2
  k -n "$ns" get pods,hpa -o wide >&2 || true
  k -n "$ns" describe hpa inference >&2 || true
  k -n "$ns" logs deploy/metrics-adapter --tail=50 >&2 || true
  k -n "$ns" get events --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2 || true
  [ ! -f "$out/loadgen.log" ] || tail -n 30 "$out/loadgen.log" >&2
}
# Background jobs: the processes themselves (never a shell function, whose `$!` would be a
# subshell that outlives nothing), stopped with their children however the script ends.
background=()
cleanup() {
  local status=$? pid
  for pid in "${background[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then dump; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One release build for every binary (the images, loadgen and the model import share it).
say "building the release binaries"
cargo build --release --workspace --bins --examples
release=${CARGO_TARGET_DIR:-$root/target}/release
loadgen=$release/loadgen

# The inference image carries the model: fetch and import it first when it is not there yet.
if ! ls "$models"/*.json >/dev/null 2>&1; then
  if [ "$cluster" = local ]; then
    say "no model in $models/: make model OFFLINE=1 (ResNet50 with random weights: no download)"
    make model OFFLINE=1 MODELS="$models"
  else
    say "no model in $models/: make model"
    make model MODELS="$models"
  fi
fi
say "building the images"
if [ "$cluster" = local ]; then
  MODELS="$models" e2e/cluster/images.sh project
else
  make images MODELS="$models"
fi

say "deploying (kubectl apply -k $manifests)"
k apply -k "$manifests"
for deployment in prometheus inference dispatcher metrics-adapter; do
  k -n "$ns" rollout status "deploy/$deployment" --timeout=5m
done
k wait --for=condition=Available apiservice/v1beta2.custom.metrics.k8s.io --timeout=3m

# What the HPA's client sees: the group in the apiserver's aggregated discovery, each version
# `Current` (a `Stale` one is dropped by client-go: the HPA then shows <unknown>). kubectl has
# no flag for the Accept header, so this asks through `kubectl proxy`.
kubectl --context "$context" proxy --port=0 >"$out/proxy.log" 2>&1 &
background+=("$!")
for _ in $(seq 1 50); do grep -q "Starting to serve" "$out/proxy.log" && break; sleep 0.2; done
proxy=$(sed -n 's/^Starting to serve on //p' "$out/proxy.log")
[ -n "$proxy" ] || fail "kubectl proxy did not start ($out/proxy.log)"
aggregated="application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
aggregated="$aggregated,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
for attempt in $(seq 1 30); do
  freshness=$(curl -fs -H "Accept: $aggregated" "http://$proxy/apis" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["items"]
for group in groups:
    if group["metadata"]["name"] == "custom.metrics.k8s.io":
        print(" ".join("%s=%s/%d" % (v["version"], v.get("freshness", "Current"), len(v.get("resources") or []))
                       for v in group["versions"]))
' || true)
  case "$freshness" in
    *v1beta2=Current/[1-9]*v1beta1=Current/[1-9]*) break ;;
  esac
  [ "$attempt" = 30 ] && fail "custom.metrics.k8s.io is not Current in aggregated discovery: '$freshness'"
  sleep 4
done
say "aggregated discovery: custom.metrics.k8s.io $freshness"
versions=$(k api-versions)
grep -qx custom.metrics.k8s.io/v1beta2 <<<"$versions" || fail "kubectl api-versions does not list custom.metrics.k8s.io/v1beta2"

kubectl --context "$context" -n "$ns" port-forward svc/dispatcher 18080:8080 >"$out/port-forward.log" 2>&1 &
background+=("$!")
for _ in $(seq 1 50); do curl -fs localhost:18080/readyz >/dev/null 2>&1 && break; sleep 0.2; done
target=http://localhost:18080/v1/classify

# The request counter has no series before the first request: warm up, then check what the HPA
# will read, the way it reads it.
say "warm-up load, then the custom metrics API"
"$loadgen" --target "$target" --rate 2 --duration 20s --quiet >/dev/null
metric="/apis/custom.metrics.k8s.io/v1beta2/namespaces/$ns/pods/*/inference_requests_per_second"
for attempt in $(seq 1 30); do
  answer=$(k get --raw "$metric" 2>/dev/null || true)
  if grep -q '"MetricValueList"' <<<"$answer"; then break; fi
  [ "$attempt" = 30 ] && { echo "e2e: the adapter never served $metric" >&2; exit 1; }
  sleep 4
done
k get --raw "$metric"; echo

say "load: stages $profile; watching deployment/inference and the HPA"
events_since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
started=$(date +%s)
LOADGEN="$loadgen" TARGET="$target" E2E_CONTEXT="$context" PROFILE="$profile" OUT="$out" \
  e2e/loadtest.sh >"$out/loadgen.log" 2>&1 &
load_pid=$!
background+=("$load_pid")
max_desired=1
max_ready=0
live_values=0
scaled_down=0
: >"$out/hpa.log"
while kill -0 "$load_pid" 2>/dev/null; do
  line=$(k -n "$ns" get hpa inference --no-headers 2>/dev/null || true)
  echo "$(( $(date +%s) - started ))s $line" >>"$out/hpa.log"
  read -r desired value < <(k -n "$ns" get hpa inference \
    -o jsonpath='{.status.desiredReplicas} {.status.currentMetrics[0].pods.current.averageValue}' \
    2>/dev/null || echo 0) || true # jsonpath ends without a newline: read says EOF
  ready=$(k -n "$ns" get deploy inference -o jsonpath='{.status.readyReplicas}' 2>/dev/null || echo 0)
  [ "${desired:-0}" -gt "$max_desired" ] && max_desired=$desired
  [ "${ready:-0}" -gt "$max_ready" ] && max_ready=$ready
  [ "$max_desired" -ge 3 ] && [ "${desired:-0}" -lt "$max_desired" ] && scaled_down=1
  # A value the HPA read from the adapter (kubectl shows <unknown> while there is none).
  [ -n "${value:-}" ] && live_values=$((live_values + 1))
  sleep 5
done
wait "$load_pid" || fail "the load failed (log: $out/loadgen.log)"
say "scale-up: HPA desired up to $max_desired, up to $max_ready ready; $live_values live readings of the metric"
[ "$live_values" -gt 0 ] || fail "the HPA status never held a value of the metric (always <unknown>)"
[ "$max_desired" -ge 3 ] || fail "the HPA never asked for 3 or more replicas"
[ "$max_ready" -ge 3 ] || fail "fewer than 3 inference pods became ready"

if [ "$scaled_down" = 0 ]; then
  say "load stopped; waiting for the scale-down (stabilization 60 s, then -50 %/30 s)"
  deadline=$(( $(date +%s) + down_within ))
  while :; do
    desired=$(k -n "$ns" get hpa inference -o jsonpath='{.status.desiredReplicas}' 2>/dev/null || true)
    [ "${desired:-$max_desired}" -lt "$max_desired" ] && break
    [ "$(date +%s)" -gt "$deadline" ] && fail "no scale-down within ${down_within}s"
    sleep 10
  done
fi

k -n "$ns" get hpa inference
k -n "$ns" get events --field-selector involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=inference \
  -o json >"$out/hpa-events.json"
python3 e2e/timeline.py --csv "$out/run.csv" --events "$out/hpa-events.json" --since "$events_since" \
  --started "$started" | tee "$out/timeline.txt"
tail -n 25 "$out/loadgen.log"
say "PASS — peak $max_desired replicas; report $out/run.json, plot $out/run.png, timeline $out/timeline.txt"
