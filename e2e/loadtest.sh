#!/usr/bin/env bash
# `make loadtest`: a step load through the dispatcher of a deployed system, following the
# inference Deployment's ready replicas, with the report, series and plot written to OUT.
# `make e2e` drives its load with this script too.
#
#   make loadtest                                  # the cluster of the current kubectl context
#   E2E_CONTEXT=my-cluster make loadtest           # another context
#   TARGET=http://localhost:8080 WATCH=none make loadtest   # any dispatcher, no cluster
#
# Environment: E2E_CONTEXT (kubectl context; default: the current one), TARGET (dispatcher URL;
# default: a port-forward to svc/dispatcher), PROFILE (loadgen --stages; default: 30 s ramp to
# PEAK req/s, held HOLD seconds, then stop), PEAK (default 24), HOLD (default 240), WATCH
# (`deployment/NAME` or `none`; default deployment/inference), OUT (default e2e-out),
# LOADGEN (the binary; default: built with cargo).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
ns=imageclassifier
peak=${PEAK:-24}
hold=${HOLD:-240}
profile=${PROFILE:-30s:$peak,${hold}s:$peak}
watch=${WATCH:-deployment/inference}
out=${OUT:-$root/e2e-out}
mkdir -p "$out"

say() { echo "loadtest: $*"; }
need() { command -v "$1" >/dev/null || { echo "loadtest: needs $1 ($2)" >&2; exit 1; }; }

context_args=()
[ -n "${E2E_CONTEXT:-}" ] && context_args=(--context "$E2E_CONTEXT")

loadgen=${LOADGEN:-}
if [ -z "$loadgen" ]; then
  need cargo "https://rustup.rs"
  (cd "$root" && cargo build --release --workspace --bins --examples --quiet)
  loadgen=${CARGO_TARGET_DIR:-$root/target}/release/loadgen
fi

forward_pid=""
trap '[ -z "$forward_pid" ] || kill "$forward_pid" 2>/dev/null || true' EXIT
target=${TARGET:-}
if [ -z "$target" ]; then
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  port=18081
  kubectl "${context_args[@]}" -n "$ns" port-forward svc/dispatcher "$port:8080" \
    >"$out/loadtest-port-forward.log" 2>&1 &
  forward_pid=$!
  target=http://localhost:$port
  for _ in $(seq 1 50); do curl -fs "$target/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fs "$target/readyz" >/dev/null || {
    echo "loadtest: the dispatcher is not ready through the port-forward (log: $out/loadtest-port-forward.log)" >&2
    exit 1
  }
fi

watch_args=()
if [ "$watch" != none ]; then
  watch_args=(--watch "$watch" --namespace "$ns" "${context_args[@]}")
fi
say "stages $profile against $target${watch_args[*]:+, watching $watch}"
"$loadgen" --target "$target" --stages "$profile" "${watch_args[@]}" --quiet \
  --out "$out/run.json" --csv "$out/run.csv" --plot "$out/run.png"
say "report $out/run.json, series $out/run.csv, plot $out/run.png"
