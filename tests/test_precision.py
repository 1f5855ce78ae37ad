"""precision="bf16" / "int8": W and R rounded to bfloat16 or to int8 with a scale per
row; everything else float32.

The exact check: the engine agrees with the float64 reference run on the same model
with W and R rounded the same way (only the weights change, not the arithmetic).
"""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine import reference
from lstm_engine.packing import round_bf16, round_int8
from helpers import TOL, make_model, maxdiff, rand

ROUND = {"bf16": round_bf16, "int8": round_int8}
PRECISIONS = pytest.mark.parametrize("precision", list(ROUND))


def rounded(model, precision):
    f = ROUND[precision]
    layers = []
    for layer in model.layers:
        dirs = [le.Direction(f(d.W), f(d.R), d.b, d.peepholes, d.proj, d.activations)
                for d in layer.directions]
        layers.append(le.Layer(dirs, layer.direction, layer.clip, layer.input_forget))
    return le.Model(layers, model.embedding, model.head, model.layout)


@pytest.mark.parametrize("cfg", [
    dict(hidden=(64,)),
    dict(hidden=(37, 70), peep=True, clip=[2.0, None], head=5, head_act="Softmax"),
    dict(hidden=(20,), direction="bidirectional", proj=7),
    dict(hidden=(16, 16), vocab=30, head=30, head_act="LogSoftmax"),
], ids=["plain", "stack-peep-clip-head", "bidir-proj", "embedding"])
@PRECISIONS
def test_matches_reference_on_rounded_weights(rng, cfg, precision):
    model = make_model(rng, 9, **cfg)
    eng = le.Engine(model, precision=precision)
    token = model.embedding is not None
    X = rng.integers(0, 30, (60, 2)) if token else rand(rng, 60, 2, 9)
    Y, (h, c) = eng.run(X)
    Yr, (hr, cr) = reference.run(rounded(model, precision), X)
    assert maxdiff(Y, Yr) <= TOL and all(maxdiff(a, b) <= TOL for a, b in zip(h + c, hr + cr))
    if model.streamable:
        s = eng.open_stream()
        x0 = X[:, 0]
        ys = np.stack([s.step(int(x) if token else x) for x in x0])
        assert maxdiff(ys, Yr[:, 0]) <= TOL


@PRECISIONS
def test_wide_and_threads(rng, monkeypatch, precision):
    from lstm_engine import packing

    model = make_model(rng, 40, (130,), peep=True)
    X = rand(rng, 40, 40)
    Yr, _ = reference.run(rounded(model, precision), X[:, None])
    monkeypatch.setattr(packing, "WIDE_BYTES", 0)
    for threads in (1, 2):
        eng = le.Engine(model, precision=precision, threads=threads)
        s = eng.open_stream()
        assert maxdiff(np.stack([s.step(x) for x in X]), Yr[:, 0]) <= TOL
        assert maxdiff(eng.run(X)[0], Yr[:, 0]) <= TOL


@pytest.mark.parametrize("precision, bound", [("bf16", 2e-2), ("int8", 5e-2)])
def test_close_to_fp32(rng, precision, bound):
    """Rounding the weights moves outputs by ~1e-3 (bf16) to ~1e-2 (int8) on random
    weights: bounds for tests; README gives the figures measured on trained weights."""
    model = make_model(rng, 32, (64, 64), head=10, head_act="Softmax")
    X = rand(rng, 100, 32)
    d = maxdiff(le.Engine(model, precision=precision).run(X)[0], le.Engine(model).run(X)[0])
    assert 0 < d <= bound


def test_engines_of_every_precision_live_side_by_side(rng):
    # each precision compiles its own step; a new engine must not break the others
    model = make_model(rng, 8, (40,), head=3)
    x = rand(rng, 8)
    streams = {p: le.Engine(model, precision=p).open_stream() for p in ("int8", "fp32", "bf16")}
    ys = {p: s.step(x) for p, s in streams.items()}
    for p in ("bf16", "int8"):
        assert maxdiff(ys[p], reference.run(rounded(model, p), x[None, None])[0][0, 0]) <= TOL
    assert maxdiff(ys["fp32"], reference.run(model, x[None, None])[0][0, 0]) <= TOL
    with pytest.raises(ValueError, match="shape"):  # the unchecked fast path still refuses
        streams["int8"].step(np.zeros(8, np.float64)[:5])


def test_round_bf16():
    x = np.array([1.0, 1.00390625, 1.005859375, -3.14159265, 1e-20, 65504.0], np.float32)
    r = round_bf16(x)
    assert r[0] == 1.0 and r[1] == 1.0  # a tie rounds to even
    assert r[2] == np.float32(1.0078125)  # above the tie rounds up
    assert abs(r[3] + 3.140625) < 1e-7 and (r.view(np.uint32) & 0xFFFF == 0).all()
