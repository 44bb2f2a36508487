"""Loads a singa checkpoint of the MNIST MLP with numpy and predicts the first test images,
to check the layout docs/checkpoints.md describes against `singa predict`.

    pip install numpy safetensors
    python3 docs/examples/load_checkpoint.py runs/mnist-mlp/checkpoints/step-00009400.safetensors data/mnist
"""
import gzip
import json
import sys

import numpy as np
from safetensors import safe_open

checkpoint, data = sys.argv[1], sys.argv[2]
with safe_open(checkpoint, framework="numpy") as f:
    meta = f.metadata()
    p = {k: f.get_tensor(k) for k in f.keys() if k.startswith("param/")}
print("step", meta["step"], "job", meta["job"], "transposed", meta["transposed"])

with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
x = images[:5].astype(np.float32) * np.float32(1 / 255)  # the job's `scale`

# An inner product's weight is [in, out] (unless listed in "transposed"): y = x @ W + b.
# (PyTorch's nn.Linear keeps [out, in]: load it as weight.T.)
for layer in ["fc1", "fc2", "fc3"]:
    x = x @ p[f"param/{layer}/weight"] + p[f"param/{layer}/bias"]
    if layer != "fc3":
        x = np.maximum(x, 0)
e = np.exp(x - x.max(axis=1, keepdims=True))
probs = e / e.sum(axis=1, keepdims=True)
for i, row in enumerate(probs):
    print(json.dumps({"sample": i, "class": int(row.argmax()), "probability": float(row.max())}))
