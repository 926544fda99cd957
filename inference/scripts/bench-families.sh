#!/usr/bin/env bash
# Model-only speed per network family (docs/PERFORMANCE.md "Speed per family"): each network
# of the coverage table (the dynamo export where there is one, else the TorchScript one; random
# weights) run by `inference bench` and by
# ONNX Runtime on the same file, same batch sizes, one after the other in one run.
#
#   inference/scripts/bench-families.sh [BIN_DIR] [NETWORK...]
#
# BIN_DIR holds the release `inference` binary (default: cargo's target dir). Prints one
# Markdown table: median ms at batch 1, images/s at batch 8, and the ratios to ORT.
#
# Shared machines are noisy (±20 % between runs a minute apart), so each network is measured
# in ROUNDS rounds (default 3), ours and ORT alternating, and each side keeps its best
# round: the lowest batch-1 median, the highest batch-8 throughput.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin_dir="${1:-${CARGO_TARGET_DIR:-$here/../../target}/release}"
shift || true
networks=("$@")
if [ ${#networks[@]} -eq 0 ]; then
    networks=(resnet18 resnet50 vgg11 mobilenet_v2 mobilenet_v3_small mobilenet_v3_large
        efficientnet_b0 efficientnet_lite0 regnet_y_400mf densenet121 squeezenet1_0
        convnext_tiny)
fi
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

rounds="${ROUNDS:-3}"

best() { # best min|max BATCH KEY JSON_FILE... : the best value of KEY at BATCH over the files
    "$python" -c '
import json, sys
pick, batch, key, files = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
values = [r[key] for f in files for r in json.load(open(f))["results"] if r["batch"] == batch]
print("%.1f" % (min(values) if pick == "min" else max(values)))' "$@"
}

echo "| network | ours b1 ms | ORT b1 ms | ratio (≤ 1.5) | ours b8 img/s | ORT b8 img/s | ratio (≥ 0.8) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for net in "${networks[@]}"; do
    skeleton="$here/../tests/coverage/$net-dynamo.onnx.gz"
    [ -f "$skeleton" ] || skeleton="$here/../tests/coverage/$net-script.onnx.gz"
    "$python" "$here/coverage_models.py" fill "$skeleton" "$work/$net.onnx"
    "$bin_dir/inference" import "$work/$net.onnx" --labels imagenet > /dev/null
    for round in $(seq "$rounds"); do
        "$bin_dir/inference" bench --model "$work/$net.json" --batch-sizes 1,8 --json \
            > "$work/ours-$round.json"
        "$python" "$here/bench_ort.py" "$work/$net.onnx" --batch-sizes 1,8 --json \
            > "$work/ort-$round.json"
    done
    ours1=$(best min 1 median_ms "$work"/ours-*.json)
    ort1=$(best min 1 median_ms "$work"/ort-*.json)
    ours8=$(best max 8 images_per_s "$work"/ours-*.json)
    ort8=$(best max 8 images_per_s "$work"/ort-*.json)
    ratio1=$("$python" -c "print('%.2f' % ($ours1 / $ort1))")
    ratio8=$("$python" -c "print('%.2f' % ($ours8 / $ort8))")
    echo "| $net | $ours1 | $ort1 | $ratio1 | $ours8 | $ort8 | $ratio8 |"
    rm -f "$work/$net".* "$work"/ours-*.json "$work"/ort-*.json
done
