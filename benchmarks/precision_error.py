"""bf16 and int8 vs fp32 on a larger trained model (DESIGN §6): python benchmarks/precision_error.py

Trains the character LSTM of benchmarks/train_fixtures.py at twice the fixture's size
(embedding 64, 2 x 256, linear + log-softmax; fixed seed, one thread, about two minutes),
then streams held-out text through the engine in fp32, bf16 and int8 and reports how far
apart the outputs are, and what that does to the held-out loss. Needs torch.
"""
import time

import numpy as np
import torch
from train_fixtures import train_char

import lstm_engine as le
from converters import from_torch

torch.manual_seed(0)
torch.set_num_threads(1)
t0 = time.time()
net, ids, split, loss = train_char(64, 256, 400)
print(f"trained 400 steps in {time.time() - t0:.0f} s, final train loss {loss:.2f} nats/char")

model = from_torch(net.state_dict(), prefix="rnn", embedding="emb", head="out", head_activation="LogSoftmax")
held = ids[split:split + 2000].numpy()
outs = {}
for precision in ("fp32", "bf16", "int8"):
    s = le.Engine(model, precision=precision).open_stream()
    outs[precision] = np.stack([s.step(int(t)) for t in held])
with torch.no_grad():
    ref = torch.log_softmax(net(torch.from_numpy(held)[:, None])[:, 0], -1).numpy()
lp32 = outs["fp32"]
nll = lambda lp: -lp[np.arange(len(held) - 1), held[1:]].mean()  # noqa: E731
print(f"{len(held)} held-out characters streamed step by step (H=256, 2 layers, vocab {lp32.shape[1]})")
print(f"fp32 vs torch:  max |log-prob| diff {np.abs(lp32 - ref).max():.2e}")
for precision in ("bf16", "int8"):
    lp = outs[precision]
    print(f"{precision} vs fp32:   max |log-prob| diff {np.abs(lp - lp32).max():.2e}, "
          f"max |prob| diff {np.abs(np.exp(lp) - np.exp(lp32)).max():.2e}, "
          f"argmax agrees {np.mean(lp.argmax(1) == lp32.argmax(1)):.2%}, "
          f"held-out loss {nll(lp32):.4f} -> {nll(lp):.4f} nats/char")
