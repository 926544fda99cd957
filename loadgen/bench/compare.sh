#!/usr/bin/env bash
# loadgen benchmarks, run by hand (`make bench-loadgen`), results in docs/PERFORMANCE.md.
#  1. Peak closed-loop throughput against a static nginx endpoint: loadgen vs oha vs wrk, same
#     connections, same body, same duration.
#  2. Open-loop accuracy: achieved vs asked rate at 1k and 10k requests/s.
# Needs: nginx (Debian nginx-light), wrk, oha (`cargo install oha`), python3,
# and `make build`.
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}/release
seconds=${SECONDS_PER_RUN:-6}
connections=${CONNECTIONS:-64}
for tool in nginx wrk oha python3; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
[ -x "$target/loadgen" ] || { echo "build first: make build" >&2; exit 1; }

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body;
  server { listen 127.0.0.1:19301; location / { client_max_body_size 1m; return 200 '{"ok":true}'; } }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/19301) 2>/dev/null && break; sleep 0.05; done
url=http://127.0.0.1:19301/v1/classify
head -c 1024 /dev/urandom > "$work/body.bin"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = assert(io.open("$work/body.bin", "rb")); wrk.body = f:read("*all"); f:close()
LUA
mkdir -p "$work/images" && cp "$work/body.bin" "$work/images/body.jpg"
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# The three tools share two cores with nginx, so single runs swing by ±10 %: alternate them for
# several rounds and compare medians.
rounds=${ROUNDS:-6}
echo "## 1. Peak throughput, closed loop ($(nproc) cores, $connections connections, ${seconds}s per run, 1 KiB POST, $rounds alternating rounds)"
echo "| round | loadgen | oha | wrk | loadgen / oha |"
echo "| --- | --- | --- | --- | --- |"
lg_all=(); oha_all=(); wrk_all=()
for round in $(seq 1 "$rounds"); do
  "$target/loadgen" --target "$url" --concurrency "$connections" --duration "${seconds}s" --images "$work/images" \
    --quiet --out "$work/lg.json" >/dev/null
  lg=$(json "$work/lg.json" "round(d['requests'] / d['duration_s'])")
  oha --no-tui --output-format json -c "$connections" -z "${seconds}s" -m POST -D "$work/body.bin" \
    -T image/jpeg "$url" > "$work/oha.json"
  o=$(json "$work/oha.json" "round(d['summary']['requestsPerSec'])")
  w=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/post.lua" "$url" | awk '/Requests\/sec/ {print $2}')
  w=${w%.*}
  lg_all+=("$lg"); oha_all+=("$o"); wrk_all+=("$w")
  echo "| $round | $lg | $o | $w | $(python3 -c "print(f'{$lg / $o:.2f}')") |"
done
median() { printf '%s\n' "$@" | sort -n | python3 -c "import sys, statistics; print(round(statistics.median(int(l) for l in sys.stdin)))"; }
lg_m=$(median "${lg_all[@]}"); oha_m=$(median "${oha_all[@]}"); wrk_m=$(median "${wrk_all[@]}")
echo "| **median** | **$lg_m** | **$oha_m** | **$wrk_m** | **$(python3 -c "print(f'{$lg_m / $oha_m:.2f}')")** |"

echo
echo "## 2. Open-loop accuracy (${seconds}s each)"
echo "| asked req/s | sent | achieved req/s | achieved / asked | late | dropped | p50 ms | p99 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for rate in 1000 10000; do
  "$target/loadgen" --target "$url" --rate "$rate" --duration "${seconds}s" --images "$work/images" \
    --quiet --out "$work/open.json" >/dev/null
  echo "| $rate | $(json "$work/open.json" "d['requests']") | $(json "$work/open.json" "round(d['requests'] / d['duration_s'], 1)") | $(json "$work/open.json" "f\"{d['requests'] / d['duration_s'] / $rate:.4f}\"") | $(json "$work/open.json" "d['late']") | $(json "$work/open.json" "d['dropped']") | $(json "$work/open.json" "d['latency_ms']['p50']") | $(json "$work/open.json" "d['latency_ms']['p99']") |"
done
