"""Train the accuracy fixtures of tests/data/ (seeded): python benchmarks/train_fixtures.py

Writes, for tests/test_precision_trained.py and benchmarks/int8_error.py (which need
neither torch nor training):

    tests/data/char.lstm, char_heldout.npy     character LSTM on lstm_engine's own source
                                               (embedding 32, 2 x 128, LogSoftmax head);
                                               2000 held-out character ids (int32)
    tests/data/latch.lstm, latch_heldout.npy   "which marker fired last" classifier
                                               (8 channels, LSTM 64, Softmax head), trained
                                               until its gates saturate; 2000 frames

Needs torch and git (the text is lstm_engine's source at a pinned commit); one thread,
about a minute; the same bytes on every run here.
"""
import os
import subprocess
import sys
import time

import numpy as np
import torch

from converters import from_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import trained  # tests/trained.py: fixture paths, gate statistics

HELD_OUT = 2000


class Net(torch.nn.Module):
    """Optional embedding, stacked nn.LSTM, linear head: what from_torch reads back."""

    def __init__(self, inputs, hidden, layers, classes, vocab=None):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, inputs) if vocab else None
        self.rnn = torch.nn.LSTM(inputs, hidden, num_layers=layers)
        self.out = torch.nn.Linear(hidden, classes)

    def forward(self, x):  # (T, B) ids or (T, B, I) frames -> (T, B, classes) logits
        return self.out(self.rnn(self.emb(x) if self.emb is not None else x)[0])


def train(net, batches, steps, lr):
    """Adam on the cross-entropy of every frame's label; returns the last loss."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        x, y = batches()
        loss = torch.nn.functional.cross_entropy(net(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # the latch task's loss has cliffs
        opt.step()
    return loss.item()


# lstm_engine's source at this commit is the character model's text: pinned, so that
# training again gives the same fixture bytes whatever the checkout
SOURCE_COMMIT = "d1605259f48a6968c88225b42ad2040a1eee3646"


def source_text() -> str:
    """The Python files of lstm_engine/ at SOURCE_COMMIT, in path order (needs git)."""
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout

    paths = sorted(p for p in git("ls-tree", "-r", "--name-only", SOURCE_COMMIT, "lstm_engine").split()
                   if p.endswith(".py"))
    return "".join(git("show", f"{SOURCE_COMMIT}:{p}") for p in paths)


def train_char(embedding, hidden, steps):
    """A 2-layer character model trained on lstm_engine's source (the first 90%):
    returns (net, ids of the whole text, index where the held-out 10% starts, last loss)."""
    text = source_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(ch) for ch in text])
    split = int(0.9 * len(ids))

    def batches():  # 32 windows of 64 characters, each labelled with the next character
        starts = torch.randint(0, split - 65, (32,))
        w = torch.stack([ids[s:s + 65] for s in starts]).T
        return w[:-1], w[1:]

    net = Net(embedding, hidden, 2, len(chars), vocab=len(chars))
    loss = train(net, batches, steps, 3e-3)
    return net, ids, split, loss


def char_fixture():
    net, ids, split, loss = train_char(32, 128, 600)
    model = from_torch(net.state_dict(), prefix="rnn", embedding="emb", head="out", head_activation="LogSoftmax")
    return model, ids[split:split + HELD_OUT].numpy().astype(np.int32), f"train loss {loss:.2f} nats/char"


MARKERS, CHANNELS = 4, 8


def latch_sequences(T, B):
    """Frames (T, B, 8): noise on every channel, now and then a marker (+1.5) on one of the
    first four; label (T, B): the channel of the last marker so far, 4 before any. Holding
    the answer for a long time and switching on a marker drives the gates into saturation."""
    x = 0.3 * torch.randn(T, B, CHANNELS)
    fired = torch.rand(T, B) < 0.05
    which = torch.randint(0, MARKERS, (T, B))
    x[fired, which[fired]] += 1.5
    label = torch.full((T, B), MARKERS)
    last = torch.full((B,), MARKERS)
    for t in range(T):
        last = torch.where(fired[t], which[t], last)
        label[t] = last
    return x, label


def latch_fixture():
    net = Net(CHANNELS, 64, 1, MARKERS + 1)
    # a large step size grows large weights: the gates saturate (over a quarter of them past |4|)
    loss = train(net, lambda: latch_sequences(100, 32), 1500, 5e-2)
    model = from_torch(net.state_dict(), prefix="rnn", head="out", head_activation="Softmax")
    x, label = latch_sequences(HELD_OUT, 1)
    with torch.no_grad():
        acc = (net(x).argmax(-1) == label).float().mean().item()
    return model, x[:, 0].numpy(), f"train loss {loss:.3f}, held-out accuracy {acc:.1%}"


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(trained.DATA, exist_ok=True)
    for name, make in (("char", char_fixture), ("latch", latch_fixture)):
        t0 = time.time()
        model, heldout, note = make()
        model_path, inputs_path = trained.paths(name)
        model.save(model_path)
        np.save(inputs_path, heldout)
        sat = trained.saturated_fraction(model, heldout)
        print(f"{name}: {note}; {time.time() - t0:.0f} s; gate pre-activations |z| > 4: {sat:.1%}; "
              f"{os.path.getsize(model_path) + os.path.getsize(inputs_path):,} bytes")


if __name__ == "__main__":
    main()
