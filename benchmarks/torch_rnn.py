"""PyTorch on the CPU training the char-rnn example's model, for comparison with singa.

    python3 benchmarks/torch_rnn.py --cell gru      # or lstm

The model and protocol of examples/char-rnn/job.toml (and lstm.toml): an embedding of 65
characters into 64 values, two recurrent layers of 256 units (nn.GRU / nn.LSTM, batch_first),
a linear layer to 65 scores and the softmax cross-entropy, Adam with learning rate 0.002,
batches of 32 streams of 50 characters of tiny-shakespeare with the hidden state carried
between batches (detached: truncated BPTT, as singa does). Warm-up steps untimed, then windows
of steps; the median window's characters per second. 2 threads unless --threads says otherwise.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--cell", choices=["gru", "lstm"], default="gru")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--text", default="data/text/tinyshakespeare.txt")
p.add_argument("--warmup", type=int, default=20)
p.add_argument("--windows", type=int, default=5)
p.add_argument("--steps", type=int, default=50)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(1)

text = open(args.text, encoding="utf-8").read()
vocab = sorted(set(text))
ids = torch.tensor([vocab.index(c) for c in text[: len(text) * 95 // 100]], dtype=torch.long)
B, T, H = 32, 50, 256
stream = len(ids) // B
streams = ids[: stream * B].view(B, stream)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(vocab), 64)
        rnn = nn.GRU if args.cell == "gru" else nn.LSTM
        self.rnn = rnn(64, H, num_layers=2, batch_first=True)
        self.fc = nn.Linear(H, len(vocab))

    def forward(self, x, state):
        y, state = self.rnn(self.embed(x), state)
        return self.fc(y.reshape(-1, H)), state


model = Model()
opt = torch.optim.Adam(model.parameters(), lr=0.002)
loss_fn = nn.CrossEntropyLoss()
state = None
pos = 0


def step():
    global state, pos
    if pos + T + 1 > stream:
        pos = 0
    x = streams[:, pos : pos + T]
    y = streams[:, pos + 1 : pos + T + 1]
    pos += T
    if state is not None:
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    scores, state = model(x, state)
    loss = loss_fn(scores, y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(args.warmup):
    step()
rates = []
for _ in range(args.windows):
    t = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    rates.append(args.steps * B * T / (time.perf_counter() - t))
print(
    f"pytorch {torch.__version__} {args.cell}: windows "
    + ", ".join(f"{r:,.0f}" for r in rates)
    + f"; median: {statistics.median(rates):,.0f} characters/s (loss of the last step {last:.3f})"
)
