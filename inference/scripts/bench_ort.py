#!/usr/bin/env python3
"""ONNX Runtime side of `make bench`: the same ONNX file, the same batch sizes, the same
statistics as `inference bench`, so the two tables can be read as ratios.

ORT is configured as a user would deploy it on a 2-core pod: all graph optimisations on
(batch-norm folding, fusions), intra-op threads = the machine's cores.

With --profile, also prints per batch size where a pass spends its time node by node (ORT's
session profiling, mean milliseconds per timed pass, in the order the nodes ran), to set beside
`inference bench --profile` on the same file.
"""

import argparse
import collections
import json
import os
import tempfile
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
    parser.add_argument("--profile", action="store_true",
                        help="time each node over the timed passes (ORT's session profiling)")
    args = parser.parse_args()

    session = open_session(args)
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
        if args.profile:
            # A session of its own per batch size: ORT profiles from the session's start, so the
            # warm-up passes are told apart by their order and left out.
            session = open_session(args, profile=True)
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
        row = {"batch": batch, "median_ms": median, "p99_ms": p99, "min_ms": times[0],
               "images_per_s": batch / (median / 1e3)}
        if args.profile:
            row["nodes"] = node_times(session.end_profiling(), args.warmup, args.iterations)
        rows.append(row)
    if args.json:
        print(json.dumps({"engine": f"onnxruntime {ort.__version__}", "threads": args.threads, "results": rows}, indent=2))
    else:
        print(f"onnxruntime {ort.__version__}, {args.threads} threads, all graph optimisations")
        print(f"{'batch':>6} {'median ms':>11} {'p99 ms':>11} {'min ms':>11} {'images/s':>10}")
        for r in rows:
            print(f"{r['batch']:>6} {r['median_ms']:>11.1f} {r['p99_ms']:>11.1f} {r['min_ms']:>11.1f} {r['images_per_s']:>10.1f}")
        for r in rows:
            if "nodes" in r:
                print_nodes(r)


def open_session(args, profile=False):
    """ORT as a user would deploy it on a 2-core pod (see the module's doc)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])


def node_times(path, warmup, iterations):
    """Mean milliseconds per timed pass of each node, in the order the nodes ran, from ORT's
    profile file (which is then removed): the "<node>_kernel_time" events of the passes after
    the warm-up ones."""
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    os.rmdir(os.path.dirname(path))
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    if len(runs) < warmup + iterations:
        raise SystemExit(f"ORT's profile holds {len(runs)} passes, expected {warmup + iterations}")
    timed_from = runs[warmup]["ts"]
    totals = collections.OrderedDict()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < timed_from:
            continue
        name = e["name"][: -len("_kernel_time")]
        shape = e["args"].get("output_type_shape", [{}])
        entry = totals.setdefault(name, {"name": name, "op": e["args"].get("op_name", "?"),
                                         "output": shape_text(shape), "ms": 0.0})
        entry["ms"] += e["dur"] / 1e3 / iterations
    return list(totals.values())


def shape_text(output_type_shape):
    """The first output's shape, as [n, c, h, w]."""
    for output in output_type_shape:
        for dims in output.values():
            return "[" + ", ".join(str(d) for d in dims) + "]"
    return "?"


def print_nodes(row):
    total = sum(n["ms"] for n in row["nodes"])
    print(f"\nbatch {row['batch']}: {total:.2f} ms per pass in {len(row['nodes'])} nodes "
          f"(mean; the median pass took {row['median_ms']:.2f})")
    print(f"{'ms':>8} {'%':>6}  {'node':<28} {'output':<24} op")
    for n in row["nodes"]:
        print(f"{n['ms']:>8.3f} {100 * n['ms'] / max(total, 1e-12):>6.1f}  {n['name']:<28} "
              f"{n['output']:<24} {n['op']}")


if __name__ == "__main__":
    main()
