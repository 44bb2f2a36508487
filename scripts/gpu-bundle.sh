#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu-check.sh runs on a GPU machine that has no Rust
# toolchain (the project's lent GPU machines have CUDA, PyTorch and no cargo): the singa binary
# with the CUDA device, and the test binaries of the CUDA device and of the layers, stripped,
# in .gpu/ (ignored by git: carry it). Run from anywhere; x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/tests
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

cargo build --release -p singa-cli --features cuda
cp target/release/singa .gpu/singa

# The test binaries, as cargo reports them.
cargo test --release -p singa-cuda -p singa-layers --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' \
  | while read -r exe; do cp "$exe" .gpu/tests/; done
strip .gpu/singa .gpu/tests/*
du -sh .gpu
