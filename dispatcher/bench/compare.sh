#!/usr/bin/env bash
# Dispatcher benchmarks, run by hand (`make bench-dispatcher`), results in docs/PERFORMANCE.md.
#  1. Proxy cost: wrk at fixed concurrency against the same fast upstream (nginx `return 200`),
#     directly, through nginx `proxy_pass` (keep-alive upstream), and through the dispatcher.
#  2. One slow backend: 4 fake upstreams (10 ms), one of them 10x slower for the middle of the
#     run; p50/p95/p99/p99.9 for each balancing policy.
# Needs: nginx (Debian nginx-light), wrk, ss (iproute2), a release build (`make build`).
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}/release
seconds=${SECONDS_PER_RUN:-10}
connections=${CONNECTIONS:-32}
for tool in nginx wrk ss; do command -v $tool >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk iproute2)" >&2; exit 1; }; done
if [ ! -x "$target/dispatcher" ] || [ ! -x "$target/examples/fake_upstream" ]; then
  echo "build first: make build" >&2
  exit 1
fi

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/report.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
wrk.body = string.rep("x", 2048)
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
               + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %d %.2f %.2f %.2f %.2f %.2f\n",
    summary.requests / (summary.duration / 1e6), errors,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
LUA

wait_port() { for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
run_wrk() { # url connections seconds -> "req/s errors p50 p95 p99 p99.9 max"
  wrk -t1 -c"$2" -d"$3s" --timeout 10s -s "$work/report.lua" "$1" | awk '/^RESULT/ {$1=""; print substr($0,2)}'
}
row() { read -r rps errors p50 p95 p99 p999 max <<<"$2"; printf "| %s | %s | %s | %s | %s | %s | %s |\n" "$1" "$rps" "$errors" "$p50" "$p99" "$p999" "$max"; }

mkdir -p "$work/logs"
# Two nginx instances of one worker each: the upstream, and the proxy under comparison, so each
# process's CPU can be read on its own.
nginx_conf() { # name, server block
  cat > "$work/$1.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/$1.pid;
error_log $work/logs/$1.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body-$1;
  proxy_temp_path $work/proxy-$1;
  upstream backend { server 127.0.0.1:19001; keepalive 64; }
  $2
}
NGINX
}
nginx_conf upstream 'server { listen 127.0.0.1:19001; location / { client_max_body_size 20m; return 200 '"'"'{"model":"fake","predictions":[]}'"'"'; } }'
nginx_conf proxy 'server { listen 127.0.0.1:19002; location / { client_max_body_size 20m; proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } }'
nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)
wait_port 19001; wait_port 19002
# The same resources as nginx's one worker process: one worker thread; and the default (one
# thread per core) for comparison.
"$target/dispatcher" --listen 127.0.0.1:19003 --workers 1 --upstreams 127.0.0.1:19001 2>/dev/null & pids+=($!)
"$target/dispatcher" --listen 127.0.0.1:19004 --upstreams 127.0.0.1:19001 2>/dev/null & pids+=($!)
wait_port 19003; wait_port 19004

# CPU time (user + system, clock ticks) of every thread of the processes listening on a port.
ticks() {
  local pid total=0 task fields
  for pid in $(ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    for task in /proc/"$pid"/task/*/stat; do
      read -r -a fields < "$task"
      total=$((total + fields[13] + fields[14]))
    done
  done
  echo "$total"
}
proxy_row() { # label, port: wrk through the proxy, plus the proxy's CPU ms per 1000 requests
  local before after result
  before=$(ticks "$2")
  result=$(run_wrk "http://127.0.0.1:$2/v1/classify" "$connections" "$seconds")
  after=$(ticks "$2")
  read -r rps errors p50 p95 p99 p999 max <<<"$result"
  cpu=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v r="$rps" -v s="$seconds" \
    'BEGIN { printf "%.1f", t * 1000 / hz / (r * s) * 1000 }')
  printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n" "$1" "$rps" "$errors" "$p50" "$p99" "$p999" "$max" "$cpu"
}

echo "## 1. Proxy cost ($(nproc) cores, wrk -t1 -c$connections -d${seconds}s, 2 KiB POST; latency ms)"
echo "| path | req/s | errors | p50 | p99 | p99.9 | max | proxy CPU ms / 1000 req |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
row "direct to upstream" "$(run_wrk http://127.0.0.1:19001/v1/classify "$connections" "$seconds")"
for round in $(seq 1 "${ROUNDS:-3}"); do
  proxy_row "nginx proxy_pass, 1 worker (round $round)" 19002
  proxy_row "dispatcher --workers 1 (round $round)" 19003
  proxy_row "dispatcher, 1 thread per core (round $round)" 19004
done

slow_seconds=${SLOW_SECONDS:-30}
echo
echo "## 2. One of 4 upstreams 10x slower (10 ms -> 100 ms) from second 5 for $((slow_seconds / 2)) s; wrk -c16 -d${slow_seconds}s"
echo "| policy | req/s | errors | p50 | p95 | p99 | p99.9 | max |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
port=19010
for policy in round-robin least-outstanding p2c-ewma; do
  ups=()
  for i in 0 1 2 3; do
    port=$((port + 1))
    if [ "$i" = 0 ]; then slow=(--slow-delay-ms 100 --slow-from-s 5 --slow-for-s $((slow_seconds / 2))); else slow=(); fi
    "$target/examples/fake_upstream" --listen "127.0.0.1:$port" --delay-ms 10 "${slow[@]}" & pids+=($!)
    ups+=("127.0.0.1:$port")
  done
  for u in "${ups[@]}"; do wait_port "${u##*:}"; done
  port=$((port + 1)); dport=$port
  "$target/dispatcher" --listen "127.0.0.1:$dport" --balance "$policy" \
    --upstreams "$(IFS=,; echo "${ups[*]}")" 2>/dev/null & pids+=($!)
  wait_port "$dport"
  result=$(run_wrk "http://127.0.0.1:$dport/v1/classify" 16 "$slow_seconds")
  read -r rps errors p50 p95 p99 p999 max <<<"$result"
  printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n" "$policy" "$rps" "$errors" "$p50" "$p95" "$p99" "$p999" "$max"
done
