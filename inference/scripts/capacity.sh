#!/usr/bin/env bash
# Per-pod capacity through the HTTP API: start the release server (dynamic batching on), drive
# it with wrk at increasing concurrency with a 640×480 JPEG, report throughput, p50/p99 and the
# server's RSS. The HPA target is derived from the highest throughput whose p99 stays under 1 s.
#
#   inference/scripts/capacity.sh [MODELS_DIR] [SECONDS_PER_STEP]
set -euo pipefail
models=${1:-models}
seconds=${2:-20}
bin=${CARGO_TARGET_DIR:-target}/release/inference
port=${PORT:-18080}
command -v wrk >/dev/null || { echo "capacity.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: make build" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work/photo.jpg" <<'PY'
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
y, x = np.mgrid[0:480, 0:640]
img = np.stack([(x / 640 * 255), (y / 480 * 255), ((x + y) % 256)], axis=-1)
img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
Image.fromarray(img).save(sys.argv[1], quality=90)
PY
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = assert(io.open(os.getenv("IMAGE"), "rb"))
wrk.body = f:read("*all")
f:close()
LUA

"$bin" serve --listen "127.0.0.1:$port" --model "$models" --queue-capacity 256 \
  --request-timeout-ms 10000 >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  curl -fs "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "127.0.0.1:$port/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

echo "image $(stat -c %s "$work/photo.jpg") bytes; $(nproc) cores; ${seconds}s per step"
printf "%12s %10s %10s %10s %10s %10s\n" connections "req/s" "p50 ms" "p99 ms" "non-2xx" "RSS MiB"
for c in 1 2 4 8 16 32; do
  out=$(IMAGE="$work/photo.jpg" wrk -t1 -c"$c" -d"${seconds}s" --timeout 10s --latency \
        -s "$work/post.lua" "http://127.0.0.1:$port/v1/classify")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$server/status")
  printf "%12s %10s %10s %10s %10s %10s\n" "$c" "$rps" "$p50" "$p99" "${errors:-0}" "$rss"
done
curl -fs "127.0.0.1:$port/metrics" | grep -E '^inference_batch_size_(sum|count)'
