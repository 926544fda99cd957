#!/usr/bin/env bash
# The whole data path as local processes, no cluster: Prometheus (the binary on PATH), three
# inference servers, the dispatcher with static upstreams, the metrics adapter reading object
# labels from the series (--objects-from=prometheus), and loadgen at a fixed rate through the
# dispatcher. Then it checks, with real kubectl against the adapter, what the HPA would see.
#
#   e2e/local-stack.sh                  # `make local`: release binaries, models/ from `make model`
#   MODELS=dir e2e/local-stack.sh       # what `make test` runs (a random-weight ResNet50)
#
# Environment: BIN (folder with inference, dispatcher, metrics-adapter, loadgen; default
# $CARGO_TARGET_DIR/release), MODELS (default models), RATE (requests/s, default 4),
# DURATION (seconds of load, at least 45; default 60), KEEP=1 (leave the work folder for inspection).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}
models=${MODELS:-$root/models}
rate=${RATE:-4}
duration=${DURATION:-60}
[ "$duration" -ge 45 ] || { echo "local-stack: DURATION must be at least 45 (a 30 s rate window)" >&2; exit 2; }
namespace=imageclassifier

fail() { echo "local-stack: FAIL: $*" >&2; exit 1; }
for tool in prometheus kubectl python3 curl; do
  command -v "$tool" >/dev/null || fail "needs $tool on PATH (make deps installs prometheus)"
done
for b in inference dispatcher metrics-adapter loadgen; do
  [ -x "$bin/$b" ] || fail "$bin/$b is missing: build first (cargo build --release --workspace)"
done
ls "$models"/*.json >/dev/null 2>&1 || fail "no model in $models: run make model (or make model OFFLINE=1)"

work=$(mktemp -d)
# Containers (e2e/containers.sh) run as another user and write reports and data here.
if [ "${SHARED_WORK:-0}" = 1 ]; then chmod a+rwx "$work"; fi
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "--- logs (last lines of each) ---" >&2
    for log in "$work"/*.log; do echo "== $log" >&2; tail -n 15 "$log" >&2; done
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url what
  for _ in $(seq 1 300); do curl -fsk "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$2 never answered $1"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- inference servers -------------------------------------------------------------------
inference_ports=()
inference_pids=()
for i in 1 2 3; do
  port=$(free_port)
  "$bin/inference" serve --listen "127.0.0.1:$port" --model "$models" --max-batch 8 --max-delay-ms 5 \
    >"$work/inference-$i.log" 2>&1 &
  pids+=($!); inference_pids+=($!); inference_ports+=("$port")
done
for port in "${inference_ports[@]}"; do wait_http "http://127.0.0.1:$port/readyz" "inference :$port"; done

# --- Prometheus: static targets labelled as the Kubernetes scrape config labels pods ------
prom_port=$(free_port)
{
  echo "global: {scrape_interval: 1s, evaluation_interval: 1s}"
  echo "scrape_configs:"
  for i in 1 2 3; do
    echo "- job_name: inference-$i"
    echo "  static_configs:"
    echo "  - targets: ['127.0.0.1:${inference_ports[$((i - 1))]}']"
    echo "    labels: {namespace: $namespace, pod: inference-$i, app: inference}"
  done
} >"$work/prometheus.yml"

# --- dispatcher --------------------------------------------------------------------------
dispatcher_port=$(free_port)
upstreams=$(printf '127.0.0.1:%s,' "${inference_ports[@]}")
"$bin/dispatcher" --listen "127.0.0.1:$dispatcher_port" --upstreams "${upstreams%,}" \
  >"$work/dispatcher.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$dispatcher_port/readyz" "dispatcher"
cat >>"$work/prometheus.yml" <<EOF
- job_name: dispatcher
  static_configs:
  - targets: ['127.0.0.1:$dispatcher_port']
    labels: {namespace: $namespace, pod: dispatcher-1, app: dispatcher}
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready" "prometheus"

# --- metrics adapter ---------------------------------------------------------------------
adapter_port=$(free_port)
"$bin/metrics-adapter" --listen "127.0.0.1:$adapter_port" --prometheus-url "http://127.0.0.1:$prom_port" \
  --config "$root/manifests/adapter/rules.yaml" --objects-from prometheus --authn none \
  --metrics-relist-interval 5s >"$work/adapter.log" 2>&1 &
adapter_pid=$!
pids+=("$adapter_pid")
wait_http "https://127.0.0.1:$adapter_port/readyz" "metrics adapter"
kubeconfig="$work/kubeconfig"
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: adapter
  cluster: {server: "https://127.0.0.1:$adapter_port", insecure-skip-tls-verify: true}
users:
- name: local
  user: {token: not-checked-with-authn-none}
contexts:
- name: adapter
  context: {cluster: adapter, user: local}
current-context: adapter
EOF
raw() { kubectl --kubeconfig "$kubeconfig" get --raw "$1"; }

# --- load --------------------------------------------------------------------------------
echo "local-stack: ${duration}s at ${rate} req/s through the dispatcher (:$dispatcher_port) to 3 inference servers"
"$bin/loadgen" --target "http://127.0.0.1:$dispatcher_port/v1/classify" --rate "$rate" --duration "${duration}s" \
  --synthetic 320x240 --quiet --out "$work/loadgen.json" --plot "$work/loadgen.svg" >"$work/loadgen.log" 2>&1 &
loadgen_pid=$!
pids+=("$loadgen_pid")

# What each inference server has itself counted (first attempts, any status), one total per
# server: the ground truth the adapter's per-pod rates are checked against. Not the offered
# rate: on a busy machine three ResNet50 servers may serve less than loadgen offers
# (the dispatcher queues the rest), and the adapter must report what they served.
served() {
  for port in "${inference_ports[@]}"; do
    curl -fs "http://127.0.0.1:$port/metrics" | python3 -c '
import sys
print(sum(float(line.rsplit(" ", 1)[1]) for line in sys.stdin
          if line.startswith("inference_requests_total{") and "attempt=\"first\"" in line))'
  done | paste -sd' '
}

# After two thirds of the run the adapter's 30 s rate window is full of steady load: check
# what the HPA would read against the servers' own counts over the same 30 s, then take one
# inference server away (SIGTERM, as a pod deletion does).
sleep $((duration * 2 / 3 - 30))
before=$(served)
sleep 30
metric="/apis/custom.metrics.k8s.io/v1beta2/namespaces/$namespace/pods/*/inference_requests_per_second"
raw "$metric" >"$work/metric.json" || fail "kubectl get --raw $metric"
after=$(served)
python3 - "$work/metric.json" "$rate" "$before" "$after" <<'PY' || fail "the adapter's answer does not match what the servers served"
import json, sys
answer = json.load(open(sys.argv[1]))
offered = float(sys.argv[2])
served = {f"inference-{i + 1}": (float(b), float(a))
          for i, (b, a) in enumerate(zip(sys.argv[3].split(), sys.argv[4].split()))}
def milli(q):
    if q.endswith("m"): return int(q[:-1])
    if q.endswith("k"): return int(q[:-1]) * 1_000_000
    return int(q) * 1000
values = {i["describedObject"]["name"]: milli(i["value"]) / 1000 for i in answer["items"]}
print("local-stack: inference_requests_per_second per pod:", values)
assert answer["kind"] == "MetricValueList", answer
assert sorted(values) == sorted(served), values
for pod, (b, a) in served.items():
    counted = (a - b) / 30
    # Prometheus extrapolates rate() over its scrapes, a second or two off the counts taken
    # here, and a busy server counts a whole batch (up to 8, 0.27 req/s over 30 s) at once.
    assert abs(values[pod] - counted) <= 0.15 * counted + 0.3, \
        f"{pod}: the adapter says {values[pod]:.2f} req/s, the server counted {counted:.2f}"
assert all(v > 0 for v in values.values()), "the dispatcher must spread load over all pods"
total = sum(values.values())
print(f"local-stack: sum {total:.2f} req/s, as the servers counted (within 15 %); offered {offered}")
PY
series=$(curl -fsG "http://127.0.0.1:$prom_port/api/v1/series" --data-urlencode 'match[]=inference_requests_total')
echo "$series" | python3 -c '
import json, sys
series = json.load(sys.stdin)["data"]
assert series, "no inference_requests_total series"
for s in series:
    assert s["namespace"] == "imageclassifier" and s["app"] == "inference" and s["pod"].startswith("inference-"), s
print(f"local-stack: {len(series)} inference_requests_total series carry namespace/pod/app labels")
' || fail "Prometheus series lack the labels the adapter maps"
raw "/apis/custom.metrics.k8s.io/v1beta2" | json "'pods/inference_requests_per_second' in [r['name'] for r in d['resources']]" \
  | grep -q True || fail "discovery does not list pods/inference_requests_per_second"

kill -TERM "${inference_pids[2]}"
wait "${inference_pids[2]}" || fail "inference-3 did not exit cleanly on SIGTERM"
echo "local-stack: inference-3 stopped mid-run"

wait "$loadgen_pid" || fail "loadgen failed (see loadgen.log)"
python3 - "$work/loadgen.json" <<'PY' || fail "requests were lost"
import json, sys
report = json.load(open(sys.argv[1]))
print(f"local-stack: loadgen sent {report['requests']} requests, {report['errors']} errors, "
      f"p50 {report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms")
assert report["requests"] > 0 and report["errors"] == 0, report["statuses"]
PY

# --- clean shutdown ----------------------------------------------------------------------
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${inference_pids[0]}" "${inference_pids[1]}" "$adapter_pid"; do
  wait "$pid" || fail "a server (pid $pid) did not exit cleanly on SIGTERM"
done
pids=()
echo "local-stack: PASS"
