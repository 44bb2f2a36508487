#!/usr/bin/env bash
# Everything the CUDA device is checked with on a machine with an NVIDIA GPU, in one run of a
# few minutes (the logs go to $OUT, default runs/gpu-check):
#   1. the conformance suite and the layers' device checks with SINGA_REQUIRE_GPU=1 (a skip
#      fails), the kernel compile test, and NCCL's sums over every GPU of the machine
#      (SINGA_REQUIRE_NCCL=1: NCCL comes with PyTorch's nvidia-nccl package);
#   2. the MNIST example on the GPU (examples/mnist-mlp/cuda.toml), and again with f16 products
#      and dynamic loss scaling (the same job with `precision = "f16"`);
#   3. the same MNIST job with two workers in two processes, each on its GPU (`[cluster] gpus`),
#      through the servers' messages and, with two GPUs, through NCCL (`collective = true`);
#   4. `singa bench mlp|cnn --device cuda` against PyTorch on the same GPU, batch 64 and 1024,
#      interleaved, three rounds (benchmarks/torch_precision.py --device cuda); with two GPUs,
#      two workers through the servers' messages against NCCL (`--collective`).
# Binaries come from .gpu/ (scripts/gpu-bundle.sh, for machines without cargo), or are built
# here with cargo when it exists. CUDA's NVRTC and cuBLAS are found in the CUDA toolkit or in the
# nvidia-* Python packages PyTorch brings.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
BIN="${SINGA_GPU_BIN:-.gpu}"
if [ ! -x "$BIN/singa" ] && command -v cargo >/dev/null; then
  bash scripts/gpu-bundle.sh
fi

LIBS="$(python3 - <<'PY'
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        if any(k in os.path.basename(lib) for k in ("nvrtc", "cublas", "nccl")):
            dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${LIBS:+$LIBS:}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SINGA_REQUIRE_GPU=1 SINGA_REQUIRE_NVRTC=1 SINGA_REQUIRE_NCCL=1
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader; python3 -m pip show nvidia-cuda-nvrtc nvidia-nccl-cu13 nvidia-nccl-cu12 2>/dev/null | grep -E "^(Name|Version)"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } | tee "$OUT/gpu.txt"

"$BIN/singa" devices | tee -a "$OUT/gpu.txt"

status=0
echo "== tests" | tee "$OUT/tests.log"
for t in "$BIN"/tests/*; do
  echo "== $(basename "$t")" >> "$OUT/tests.log"
  if timeout 300 "$t" --test-threads 4 >> "$OUT/tests.log" 2>&1; then
    echo "ok      $(basename "$t")"
  else
    echo "FAILED  $(basename "$t") (see tests.log)"
    status=1
  fi
done

echo "== MNIST example on the GPU"
timeout 300 "$BIN/singa" train examples/mnist-mlp/cuda.toml --workspace /tmp/singa-mnist-cuda \
  2>&1 | tee "$OUT/mnist.log" | grep -E "training on|test |error" || status=1

echo "== MNIST example on the GPU in f16, with dynamic loss scaling"
sed 's/^precision = "f32"/precision = "f16"/' examples/mnist-mlp/cuda.toml \
  > examples/mnist-mlp/cuda-f16.toml
timeout 300 "$BIN/singa" train examples/mnist-mlp/cuda-f16.toml --workspace /tmp/singa-mnist-f16 \
  2>&1 | tee "$OUT/mnist-f16.log" | grep -E "training on|loss_scale|test |error" || status=1
rm -f examples/mnist-mlp/cuda-f16.toml

echo "== MNIST on the GPUs of [cluster] gpus: two workers in two processes (GPUs 0 and 1, or 0 twice)"
second=$(( $(nvidia-smi -L | wc -l) > 1 ? 1 : 0 ))
# Through the servers' messages; then, with two GPUs, through NCCL's collectives (NCCL refuses
# two members on one GPU).
modes="false"
[ "$second" = 1 ] && modes="false true"
for collective in $modes; do
  sed -e 's/^train_steps = 9400 .*/train_steps = 2000/' -e "s/^gpus = \[0, 1\]/gpus = [0, $second]/" \
    -e "s/^collective = true .*/collective = $collective/" \
    examples/mnist-mlp/cuda-gpus.toml > examples/mnist-mlp/cuda-gpus-check.toml
  echo "-- collective = $collective"
  timeout 200 "$BIN/singa" train examples/mnist-mlp/cuda-gpus-check.toml \
    --workspace "/tmp/singa-mnist-gpus-$collective" \
    2>&1 | tee "$OUT/mnist-gpus-$collective.log" | grep -E "training on|rank|test |error" || status=1
done
rm -f examples/mnist-mlp/cuda-gpus-check.toml

echo "== singa bench against PyTorch on the same GPU (three interleaved rounds)"
for round in 1 2 3; do
  for batch in 64 1024; do
    for model in mlp cnn; do
      timeout 120 "$BIN/singa" bench "$model" --device cuda --batch "$batch" --data data/mnist 2>&1 \
        | grep -E "singa bench|median|error" | sed "s/^/round $round singa   /"
      timeout 120 python3 benchmarks/torch_precision.py "$model" --device cuda --batch "$batch" 2>&1 \
        | tail -1 | sed "s/^/round $round pytorch /"
    done
  done
done | tee "$OUT/bench.log"

if [ "$second" = 1 ]; then
  echo "== two GPUs, two workers in two processes: the servers' messages against NCCL (three rounds)"
  for round in 1 2 3; do
    for how in "" "--collective"; do
      timeout 120 "$BIN/singa" bench mlp --device cuda --workers 2 --nprocs 2 --gpus 0,1 --batch 1024 $how \
        --data data/mnist 2>&1 | grep -E "median|error" | sed "s/^/round $round ${how:-messages} /"
    done
  done | tee "$OUT/bench-gpus.log"
fi
exit $status
