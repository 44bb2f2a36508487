#!/usr/bin/env python3
"""Runs a model `singa export` wrote with ONNX Runtime on the MNIST test images, preparing
them as the model's metadata says (`singa.preprocessing`), and prints the first predictions
and the accuracy.

Usage: run_onnx.py MODEL.onnx MNIST_DIR [N]

MNIST_DIR holds t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (data/mnist here).
Needs: pip install onnxruntime numpy
"""
import gzip
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def prepare(values, p):
    """Stored values as the model's input: scaled, minus the mean, divided by the std (one
    value or one per channel), then the centre crop."""
    x = values.astype(np.float32) * p["scale"]
    channels = lambda v: np.array(v, np.float32).reshape(-1, 1, 1) if len(v) > 1 else v[0]
    if p["mean"]:
        x = x - channels(p["mean"])
    x = x / channels(p["std"])
    if p["crop"]:
        (h, w), (H, W) = p["crop"], x.shape[-2:]
        top, left = (H - h) // 2, (W - w) // 2
        x = x[..., top : top + h, left : left + w]
    return x


def main(model, mnist, n=10000):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    (name, p), = json.loads(meta["singa.preprocessing"]).items()
    classes = json.loads(meta.get("singa.classes", "[]"))
    images = idx(os.path.join(mnist, "t10k-images-idx3-ubyte.gz"))[:n, None]  # [n, 1, 28, 28]
    labels = idx(os.path.join(mnist, "t10k-labels-idx1-ubyte.gz"))[:n]
    print(f"input {name}: {p['description']}")
    (prob,) = session.run(["prob"], {name: prepare(images, p)})
    for i in range(3):
        c = int(prob[i].argmax())
        print(f"sample {i}: label {labels[i]}, predicted {classes[c] if classes else c} ({prob[i, c]:.4f})")
    accuracy = (prob.argmax(axis=1) == labels).mean()
    print(f"accuracy on {len(labels)} test images: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
