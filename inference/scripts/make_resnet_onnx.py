#!/usr/bin/env python3
"""Write a ResNet ONNX graph (torchvision layout, v1.5: stride on the 3x3 convolution) with
random weights. Used offline instead of the pretrained download (`make model OFFLINE=1`) and by
the tests, so every code path that loads the real model runs without the internet.

Only the `onnx` and `numpy` packages are needed (no torch).
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ARCHS = {
    # name: (block type, blocks per stage)
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


class Graph:
    def __init__(self, rng):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix, array):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x, cin, cout, k, stride=1, pad=0):
        fan_in = cin * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin, k, k))
        out = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv", [x, self.const("w", w)], [out],
                kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
            )
        )
        return out

    def bn(self, x, c, gamma_scale=1.0):
        gamma = self.rng.uniform(0.5, 1.5, c) * gamma_scale
        beta = self.rng.normal(0.0, 0.1, c)
        mean = self.rng.normal(0.0, 0.1, c)
        var = self.rng.uniform(0.5, 1.5, c)
        out = self.name("bn")
        self.nodes.append(
            helper.make_node(
                "BatchNormalization",
                [x, self.const("gamma", gamma), self.const("beta", beta),
                 self.const("mean", mean), self.const("var", var)],
                [out], epsilon=1e-5,
            )
        )
        return out

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out


def block(g, x, cin, width, stride, kind):
    expansion = 4 if kind == "bottleneck" else 1
    cout = width * expansion
    if kind == "bottleneck":
        y = g.op("Relu", [g.bn(g.conv(x, cin, width, 1), width)])
        y = g.op("Relu", [g.bn(g.conv(y, width, width, 3, stride, 1), width)])
        # Small last gamma keeps activations bounded through deep random stacks, like
        # torchvision's zero_init_residual does for training.
        y = g.bn(g.conv(y, width, cout, 1), cout, gamma_scale=0.2)
    else:
        y = g.op("Relu", [g.bn(g.conv(x, cin, width, 3, stride, 1), width)])
        y = g.bn(g.conv(y, width, cout, 3, 1, 1), cout, gamma_scale=0.2)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.bn(g.conv(x, cin, cout, 1, stride), cout)
    return g.op("Relu", [g.op("Add", [y, shortcut])]), cout


def build(arch, classes, seed, batch, zoo=False):
    kind, stages = ARCHS[arch]
    g = Graph(np.random.default_rng(seed))
    x = g.op("Relu", [g.bn(g.conv("input", 3, 64, 7, 2, 3), 64)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for stage, blocks in enumerate(stages):
        width = 64 * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            x, channels = block(g, x, channels, width, stride, kind)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    w = g.rng.normal(0.0, np.sqrt(1.0 / channels), size=(classes, channels))
    b = g.rng.normal(0.0, 0.01, size=classes)
    g.nodes.append(helper.make_node("Gemm", [x, g.const("fc_w", w), g.const("fc_b", b)], ["logits"], transB=1))
    n = batch if batch > 0 else "N"
    # The ONNX model zoo's ResNet50-v1-12 (what `make model` downloads) names its tensors
    # `data` and `resnetv17_dense0_fwd`, is opset 12 / IR 7, and, as older exporters did,
    # lists its weights among the graph inputs; `zoo` mimics that interface.
    input_name, output_name = ("data", "resnetv17_dense0_fwd") if zoo else ("input", "logits")
    g.nodes[-1].output[0] = output_name
    renamed = [node for node in g.nodes if "input" in node.input]
    for node in renamed:
        node.input[list(node.input).index("input")] = input_name
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [n, 3, 224, 224])]
    if zoo:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits]
    graph = helper.make_graph(
        g.nodes, arch, inputs,
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [n, classes])],
        g.inits,
    )
    opset, ir_version = (12, 7) if zoo else (17, 8)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="imageclassifier")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet50")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0, help="fixed batch size; 0 = dynamic")
    parser.add_argument("--zoo", action="store_true",
                        help="the interface of the ONNX model zoo's ResNet50-v1-12: tensors `data` and "
                             "`resnetv17_dense0_fwd`, opset 12, weights also listed as graph inputs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    onnx.save(build(args.arch, args.classes, args.seed, args.batch, args.zoo), args.out)
    print(f"wrote {args.out} ({args.arch}, {args.classes} classes, random weights, seed {args.seed})")


if __name__ == "__main__":
    main()
