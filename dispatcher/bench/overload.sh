#!/usr/bin/env bash
# Overload without retry storms, run by hand (`make bench-overload`), results in
# docs/PERFORMANCE.md ("Overload: retries and goodput").
#
# Three fake inference pods of fixed capacity (dispatcher/examples/fake_upstream.rs: one
# worker, 50 ms a request, so 20 req/s each and 60 in all; 4 more may wait, beyond that 503 +
# Retry-After: 1 at once, as the inference server's queue does), the dispatcher in front, and
# loadgen offering open-loop load at 2x and 3x that capacity. Per dispatcher build and rate:
# client requests, retries per request, goodput (200 answers/s), the 503 share, and latency
# (all answers, from each request's intended send time).
#
# DISPATCHERS="label=path …" compares builds side by side in one run, e.g. the build before a
# change (a git worktree built with `cargo build --release -p dispatcher`) and the current one.
# Needs: a release build (`make build`: the dispatcher, loadgen, the fake_upstream example), python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/release
dispatchers=${DISPATCHERS:-current=$target/dispatcher}
rates=${RATES:-120 180}
seconds=${SECONDS_PER_RUN:-30}
for binary in "$target/loadgen" "$target/examples/fake_upstream"; do
  [ -x "$binary" ] || { echo "build first: make build ($binary is missing)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

wait_port() { for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

upstreams=""
for port in 19201 19202 19203; do
  "$target/examples/fake_upstream" --listen "127.0.0.1:$port" --delay-ms 50 --workers 1 --queue 4 &
  pids+=($!)
  wait_port "$port"
  upstreams+="${upstreams:+,}127.0.0.1:$port"
done

echo "| dispatcher | offered req/s | requests | retries / request | goodput (200/s) | 503 share | p50 ms | p99 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for entry in $dispatchers; do
  label=${entry%%=*}
  binary=${entry#*=}
  [ -x "$binary" ] || { echo "$label: no dispatcher at $binary" >&2; exit 1; }
  for rate in $rates; do
    "$binary" --listen 127.0.0.1:19200 --upstreams "$upstreams" >"$work/dispatcher.log" 2>&1 &
    dispatcher=$!
    pids+=("$dispatcher")
    wait_port 19200
    "$target/loadgen" --target http://127.0.0.1:19200/v1/classify --rate "$rate" \
      --duration "${seconds}s" --synthetic 64x64 --out "$work/run.json" >/dev/null
    curl -fsS http://127.0.0.1:19200/metrics >"$work/metrics.txt"
    kill "$dispatcher"
    wait "$dispatcher" || true
    python3 - "$label" "$rate" "$work/run.json" "$work/metrics.txt" <<'PY'
import json, sys
label, rate, run, metrics = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), open(sys.argv[4]).read()
retries = sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("dispatcher_retries_total"))
requests = run["requests"]
ok = run["statuses"].get("200", 0)
refused = run["statuses"].get("503", 0)
latency = run["latency_ms"]
print(f"| {label} | {rate} | {requests} | {retries / requests:.2f} | {ok / run['duration_s']:.1f} "
      f"| {refused / requests:.0%} | {latency['p50']:.0f} | {latency['p99']:.0f} |")
PY
  done
done
