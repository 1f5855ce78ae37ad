"""The trained fixtures in tests/data/: real weights to measure bf16 and int8 on.

Written by benchmarks/train_fixtures.py (seeded, needs torch); read here without torch,
so tests and benchmark scripts share the paths and the gate statistics.

    char    character LSTM: embedding 32, 2 x LSTM 128, linear + LogSoftmax over the
            symbols of lstm_engine's source; held-out input: character ids (T,)
    latch   sequence classifier: 8 noisy channels, LSTM 64, linear + Softmax over "which
            marker channel fired last"; its gates saturate; held-out input: frames (T, 8)
"""
import os

import numpy as np

import lstm_engine as le
from lstm_engine import reference

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURES = ("char", "latch")


def paths(name):
    """The model file and the held-out inputs of one fixture."""
    return os.path.join(DATA, f"{name}.lstm"), os.path.join(DATA, f"{name}_heldout.npy")


def load(name):
    """(Model, held-out inputs) of one fixture."""
    model_path, inputs_path = paths(name)
    return le.load(model_path), np.load(inputs_path)


def step_inputs(model, inputs) -> list:
    """The held-out inputs as Stream.step arguments: token ids as int, frames as rows."""
    return [int(t) for t in inputs] if model.embedding is not None else list(inputs)


def gate_preactivations(model, X):
    """Every layer's gate pre-activations W x + R h + b over the sequence X, from zero
    state: a list of (T, 4H) float64 arrays (forward, unprojected layers)."""
    x = model.embedding.weight[X].astype(np.float64) if model.embedding is not None else X.astype(np.float64)
    out = []
    for layer in model.layers:
        d = layer.directions[0]
        h = reference.run(le.Model([layer]), x[:, None])[0][:, 0]  # h after each step
        h_prev = np.concatenate([np.zeros((1, h.shape[1])), h[:-1]])
        out.append(x @ d.W.T.astype(np.float64) + h_prev @ d.R.T.astype(np.float64) + d.b)
        x = h
    return out


def saturated_fraction(model, X, bound=4.0):
    """Fraction of all gate pre-activations with |z| > bound (sigmoid(4) = 0.982)."""
    z = np.concatenate([g.ravel() for g in gate_preactivations(model, X)])
    return float(np.mean(np.abs(z) > bound))
