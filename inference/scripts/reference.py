#!/usr/bin/env python3
"""Reference computations the Rust tests compare against: ONNX Runtime for the model, and a
Pillow implementation of torchvision's ResNet preprocessing.

  reference.py logits MODEL.onnx INPUT.f32 N SIZE OUTPUT.f32
  reference.py preprocess IMAGE SIZE RESIZE OUTPUT.f32 [bilinear|bicubic] [shorter-then-crop|squash]

Tensors are raw little-endian float32, row-major.
"""

import sys

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def logits(model, input_path, n, size, output_path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.fromfile(input_path, dtype="<f4").reshape(int(n), 3, int(size), int(size))
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {name: x})
    out.astype("<f4").tofile(output_path)


def preprocess(image_path, size, resize, output_path, interpolation="bilinear", mode="shorter-then-crop"):
    from PIL import Image

    size, resize = int(size), int(resize)
    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    if mode == "squash":
        # torchvision.transforms.Resize((size, size))
        nw, nh = size, size
    elif w <= h:
        # torchvision.transforms.Resize(resize): shorter side -> resize, longer side truncated.
        nw, nh = resize, int(resize * h / w)
    else:
        nw, nh = int(resize * w / h), resize
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    img = img.resize((nw, nh), filters[interpolation])
    # torchvision.transforms.CenterCrop(size)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    x.transpose(2, 0, 1).astype("<f4").tofile(output_path)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"logits": logits, "preprocess": preprocess}[command](*args)
