#!/usr/bin/env python3
"""ONNX Runtime side of `make bench`: the same ONNX file, the same batch sizes, the same
statistics as `inference bench`, so the two tables can be read as ratios.

ORT is configured as a user would deploy it on a 2-core pod: all graph optimisations on
(batch-norm folding, fusions), intra-op threads = the machine's cores.
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    size = meta.shape[2] if isinstance(meta.shape[2], int) else 224
    dynamic = not isinstance(meta.shape[0], int)
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        if not dynamic and batch != meta.shape[0]:
            print(f"skipping batch {batch}: the model's batch dimension is fixed at {meta.shape[0]}")
            continue
        x = rng.uniform(-2, 2, size=(batch, 3, size, size)).astype(np.float32)
        for _ in range(args.warmup):
            session.run(None, {meta.name: x})
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            session.run(None, {meta.name: x})
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        median = times[len(times) // 2]
        p99 = times[min(len(times), max(1, int(np.ceil(len(times) * 0.99)))) - 1]
        rows.append({"batch": batch, "median_ms": median, "p99_ms": p99, "min_ms": times[0],
                     "images_per_s": batch / (median / 1e3)})
    if args.json:
        print(json.dumps({"engine": f"onnxruntime {ort.__version__}", "threads": args.threads, "results": rows}, indent=2))
    else:
        print(f"onnxruntime {ort.__version__}, {args.threads} threads, all graph optimisations")
        print(f"{'batch':>6} {'median ms':>11} {'p99 ms':>11} {'min ms':>11} {'images/s':>10}")
        for r in rows:
            print(f"{r['batch']:>6} {r['median_ms']:>11.1f} {r['p99_ms']:>11.1f} {r['min_ms']:>11.1f} {r['images_per_s']:>10.1f}")


if __name__ == "__main__":
    main()
