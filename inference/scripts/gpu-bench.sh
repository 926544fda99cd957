#!/usr/bin/env bash
# The GPU rows of docs/PERFORMANCE.md: ResNet50 on burn's GPU backends at batch 1/8/64/256, in
# f32 and f16, one JSON file per (device, precision) plus the GPU's identity.
#
# Made for a borrowed GPU machine that has Python with onnx and numpy but no Rust toolchain and
# no internet: the inference binary is built beforehand (`cargo build --release -p inference
# --features wgpu`, or `cuda` where it can be built) and carried, the model is generated there
# with random weights (speed does not depend on weight values).
#
#   BIN=path/to/inference OUT=gpu-out DEVICES="wgpu cuda" inference/scripts/gpu-bench.sh
#
# The wgpu binary is ~90 MB (66 stripped); a borrowed machine may take less, so BIN may also be
# an xz file (`strip` then `xz -6`: ~11 MB), unpacked here with Python's lzma.
#
# BATCHES (default 1,8,64,256), ITERATIONS (10) and PRECISIONS ("f32 f16") narrow the run. A
# failing combination is recorded in its .log and the others still run; the exit status is
# non-zero if any failed.
set -uo pipefail
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/inference}
out=${OUT:-gpu-out}
devices=${DEVICES:-wgpu}
precisions=${PRECISIONS:-f32 f16}
batches=${BATCHES:-1,8,64,256}
iterations=${ITERATIONS:-10}
mkdir -p "$out"
models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
if [[ "$bin" == *.xz && -f "$bin" ]]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$bin" "$models/inference" && chmod +x "$models/inference" && bin=$models/inference
fi
[ -x "$bin" ] || { echo "gpu-bench: no inference binary at $bin (set BIN)" >&2; exit 1; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"; uname -m; nproc; } >"$out/machine.txt"

python3 "$(dirname "$0")/make_resnet_onnx.py" --arch resnet50 --out "$models/resnet50.onnx" \
  >"$out/model.log" 2>&1 || { echo "gpu-bench: generating the model failed:" >&2; cat "$out/model.log" >&2; exit 1; }
# Import checks the graph on the CPU (native kernels) and writes resnet50.json beside it.
"$bin" import "$models/resnet50.onnx" --name resnet50 --labels imagenet >>"$out/model.log" 2>&1 \
  || { echo "gpu-bench: import failed:" >&2; cat "$out/model.log" >&2; exit 1; }

failed=0
for device in $devices; do
  for precision in $precisions; do
    name="bench-$device-$precision"
    echo "== $device $precision (batches $batches, $iterations iterations)"
    if "$bin" bench --model "$models" --device "$device" --precision "$precision" \
         --batch-sizes "$batches" --iterations "$iterations" --json \
         >"$out/$name.json" 2>"$out/$name.log"; then
      python3 - "$out/$name.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for row in report["results"]:
    print(f'  batch {row["batch"]:>4}: median {row["median_ms"]:9.2f} ms  p99 {row["p99_ms"]:9.2f} ms  {row["images_per_s"]:10.1f} images/s')
PY
    else
      failed=1
      echo "  failed: $(tail -n 3 "$out/$name.log")"
    fi
  done
done
exit "$failed"
