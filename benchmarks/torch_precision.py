"""PyTorch in f32 and with bf16 autocast, on the CPU or a GPU, on the models and protocol of
`singa bench`.

    python3 benchmarks/torch_precision.py mlp --precision bf16     # or f32; cnn for the convnet
    python3 benchmarks/torch_precision.py cnn --device cuda --batch 1024    # against --device cuda

The MLP is 784-1000-500-10 (ReLU, softmax cross-entropy, SGD lr 0.1, batch 64) on MNIST from
data/mnist; the convnet is the peers' cifar10-quick shape (SGD lr 0.01, batch 64) on random
images (the speed does not depend on the pixels, as with `singa bench cnn` without --cifar).
bf16 is `torch.autocast("cpu", dtype=torch.bfloat16)` around the forward pass and the loss, as
PyTorch recommends for CPU mixed precision: weights and optimizer stay f32. Protocol as
`singa bench` and ../shared/peers: warm-up steps untimed, then 5 windows, the median window's
samples/s. 2 threads unless --threads says otherwise. On a GPU (`--device cuda`) the data set
sits on the GPU, autocast is CUDA's (f16 too), and each window ends with a synchronisation.
"""
import argparse
import gzip
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("model", choices=["mlp", "cnn"])
p.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default="data/mnist")
p.add_argument("--warmup", type=int)
p.add_argument("--windows", type=int, default=5)
p.add_argument("--steps", type=int)
a = p.parse_args()
warmup = a.warmup if a.warmup is not None else (50 if a.model == "mlp" else 3)
steps = a.steps if a.steps is not None else (200 if a.model == "mlp" else 20)
torch.set_num_threads(a.threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
batch = a.batch
dev = torch.device(a.device)

if a.model == "mlp":
    with gzip.open(f"{a.data}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
    with gzip.open(f"{a.data}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    net = nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
                        nn.Linear(500, 10))
    lr = 0.1
else:
    rng = np.random.default_rng(0)
    x = rng.random((6400, 3, 32, 32), dtype=np.float32) - 0.5
    y = rng.integers(0, 10, 6400)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    lr = 0.01
x, y = torch.from_numpy(x), torch.from_numpy(y)
order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
x, y = x[order].to(dev), y[order].to(dev)
net = net.to(dev)
opt = torch.optim.SGD(net.parameters(), lr=lr)
low = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[a.precision]
scaler = torch.amp.GradScaler(a.device, enabled=low == torch.float16)


def sync():
    if a.device == "cuda":
        torch.cuda.synchronize()


def step(i):
    lo = (i * batch) % (len(y) - batch)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(a.device, dtype=low or torch.bfloat16, enabled=low is not None):
        loss = F.cross_entropy(net(x[lo:lo + batch]), y[lo:lo + batch])
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


i = 0
for _ in range(warmup):
    step(i)
    i += 1
rates, losses = [], []
sync()
for _ in range(a.windows):
    t = time.perf_counter()
    for _ in range(steps):
        losses.append(step(i))
        i += 1
    sync()
    rates.append(steps * batch / (time.perf_counter() - t))
where = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu, {a.threads} threads"
print(f"pytorch {torch.__version__} {a.model} {a.precision} batch {batch} on {where}: windows "
      + ", ".join(f"{r:,.0f}" for r in rates)
      + f"; median: {statistics.median(rates):,.0f} samples/s"
      + f" (mean loss of the last window {float(sum(losses[-steps:])) / steps:.4f})")
