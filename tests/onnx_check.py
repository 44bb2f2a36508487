#!/usr/bin/env python3
"""Checks an ONNX model `singa export` wrote against singa's own outputs, with ONNX Runtime.

Usage: onnx_check.py MODEL CASE_DIR

CASE_DIR/case.json lists the model's inputs and outputs, each with a raw little-endian file of
its values in CASE_DIR, written by singa running the same net on the same data (see
tests/common/onnx.rs). The model must pass onnx.checker (with full shape inference), and every
output of ONNX Runtime must equal singa's within its tolerance: an absolute one, or one
relative to the largest value; outputs with `classes` must also pick the same class per
sample. Prints one JSON line of what it measured; exits 1 when something disagrees.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read(case_dir, value):
    data = np.fromfile(os.path.join(case_dir, value["file"]), dtype=value["dtype"])
    return data.reshape(value["shape"])


def main(model_path, case_dir):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    with open(os.path.join(case_dir, "case.json")) as f:
        case = json.load(f)
    feeds = {v["name"]: read(case_dir, v) for v in case["inputs"]}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    names = [v["name"] for v in case["outputs"]]
    results = session.run(names, feeds)
    report, failures = {}, []
    for value, got in zip(case["outputs"], results):
        want = read(case_dir, value)
        name = value["name"]
        if got.shape != want.shape:
            failures.append(f"{name}: ONNX Runtime gives shape {got.shape}, singa {want.shape}")
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = float(diff.max()) if diff.size else 0.0
        allowed = value["tolerance"] * (1.0 if value["absolute"] else max(1.0, float(np.abs(want).max())))
        entry = {"max_abs_diff": worst, "allowed": allowed}
        if worst > allowed:
            failures.append(f"{name}: largest difference {worst:.3g} > {allowed:.3g}")
        if value.get("classes"):
            same = int((got.argmax(axis=1) == want.argmax(axis=1)).sum())
            entry["same_class"] = f"{same}/{len(want)}"
            if same != len(want):
                failures.append(f"{name}: {len(want) - same} samples get another class")
        report[name] = entry
    report["samples"] = int(next(iter(feeds.values())).shape[0])
    print(json.dumps(report))
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
