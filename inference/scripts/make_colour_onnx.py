#!/usr/bin/env python3
"""Write a tiny ONNX classifier whose right answers are known: it names an image's dominant
colour (red, green or blue). A 1x1 convolution with identity weights keeps the three normalised
channels, global average pooling takes their means, and the largest mean wins. Used by the
accuracy tests (`inference eval`), which build datasets whose correct accuracy follows from
their construction. Only `onnx` and `numpy` are needed.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(size):
    weights = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    bias = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "dominant_colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="imageclassifier")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=32, help="input side")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    onnx.save(build(args.size), args.out)
    print(f"wrote {args.out} (dominant colour: red, green, blue)")


if __name__ == "__main__":
    main()
