"""bf16 and int8 vs fp32 on trained weights (DESIGN §6): python benchmarks/precision_error.py

Trains a small character-level LSTM (embedding, 2 x LSTM, linear + log-softmax) with
PyTorch on this repository's own Python source (fixed seed, a minute on 2 cores), then
streams held-out text through the engine in fp32, bf16 and int8 and reports how far
apart the outputs are. Needs torch.
"""
import glob
import os
import time

import numpy as np
import torch

import lstm_engine as le
from converters import from_torch

torch.manual_seed(0)
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
text = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob(f"{root}/lstm_engine/**/*.py", recursive=True)))
chars = sorted(set(text))
ids = torch.tensor([chars.index(ch) for ch in text])
split = int(0.9 * len(ids))
V, E, H = len(chars), 64, 256


class CharLSTM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = torch.nn.LSTM(E, H, num_layers=2)
        self.out = torch.nn.Linear(H, V)

    def forward(self, x):
        return torch.log_softmax(self.out(self.rnn(self.emb(x))[0]), -1)


net = CharLSTM()
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
t0 = time.time()
for _ in range(400):
    starts = torch.randint(0, split - 65, (32,))
    batch = torch.stack([ids[s:s + 65] for s in starts]).T  # (65, 32)
    loss = torch.nn.functional.nll_loss(net(batch[:-1]).reshape(-1, V), batch[1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"trained 400 steps in {time.time() - t0:.0f} s, final train loss {loss.item():.2f} nats/char")

model = from_torch(net.state_dict(), prefix="rnn", embedding="emb", head="out", head_activation="LogSoftmax")
held = ids[split:split + 2000].numpy()
outs = {}
for precision in ("fp32", "bf16", "int8"):
    s = le.Engine(model, precision=precision).open_stream()
    outs[precision] = np.stack([s.step(int(t)) for t in held])
with torch.no_grad():
    ref = net(torch.from_numpy(held)[:, None])[:, 0].numpy()
lp32 = outs["fp32"]
nll = lambda lp: -lp[np.arange(len(held) - 1), held[1:]].mean()  # noqa: E731
print(f"{len(held)} held-out characters streamed step by step (H={H}, 2 layers, vocab {V})")
print(f"fp32 vs torch:  max |log-prob| diff {np.abs(lp32 - ref).max():.2e}")
for precision in ("bf16", "int8"):
    lp = outs[precision]
    print(f"{precision} vs fp32:   max |log-prob| diff {np.abs(lp - lp32).max():.2e}, "
          f"max |prob| diff {np.abs(np.exp(lp) - np.exp(lp32)).max():.2e}, "
          f"argmax agrees {np.mean(lp.argmax(1) == lp32.argmax(1)):.2%}, "
          f"held-out loss {nll(lp32):.4f} -> {nll(lp):.4f} nats/char")
