"""Engine.run vs onnxruntime vs reference.py on randomised configurations (DESIGN §2, §6)."""
import numpy as np
import pytest

import lstm_engine as le
from lstm_engine import activations as acts
from lstm_engine import reference
from lstm_engine.kernels.layout import BLOCK
from helpers import TOL, make_model, maxdiff, ort_run, rand

T = 100  # DESIGN §6: agreement over >= 100 steps


def check(model, rng, B=2, lengths=None, state=True, T=T, ort=True):
    """Engine vs reference (always) and vs onnxruntime (when ONNX can express it)."""
    token = model.embedding is not None
    if token:
        X = rng.integers(0, model.embedding.vocab_size, (T, B))
    else:
        X = rand(rng, T, B, model.layers[0].input_size)
    if model.layout == 1:
        X = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    h0 = c0 = None
    if state:
        h0 = [rand(rng, B, P) for P, _ in model.state_sizes]
        c0 = [rand(rng, B, H) for _, H in model.state_sizes]
    eng = le.Engine(model)
    Y, (h, c) = eng.run(X, None if h0 is None else (h0, c0), lengths)
    Yr, (hr, cr) = reference.run(model, X, h0, c0, lengths)
    errs = {"ref": max(maxdiff(Y, Yr), *(maxdiff(a, b) for a, b in zip(h + c, hr + cr)))}
    if ort:
        Yo, st = ort_run(model, X, h0, c0, lengths)
        errs["ort"] = maxdiff(Y, Yo)
        if st is not None:
            errs["ort"] = max(errs["ort"], *(maxdiff(a, b) for a, b in zip(h + c, st[0] + st[1])))
    assert max(errs.values()) <= TOL, errs
    return errs


# onnxruntime consumes alpha/beta in order; give each parametrised activation values
_PARAM = {"LeakyRelu": (0.2, None), "ThresholdedRelu": (0.1, None), "ScaledTanh": (0.9, 0.7),
          "HardSigmoid": (0.3, 0.4), "Elu": (0.8, None), "Affine": (0.6, 0.1)}


def _act(name, default=False):
    a, b = (None, None) if default else _PARAM.get(name, (None, None))
    return acts.make(name, a, b)


@pytest.mark.parametrize("slot", ["f", "g", "h"])
@pytest.mark.parametrize("name", acts.NAMES)
def test_every_activation_in_every_slot(rng, name, slot):
    f, g, h = acts.DEFAULT
    if slot == "f":
        f = _act(name)
    elif slot == "g":
        g = _act(name)
    else:
        h = _act(name)
    # small weights keep unbounded activations (Relu, Affine, Softplus) from exploding
    model = make_model(rng, 5, (12,), activations=(f, g, h), scale=0.5)
    check(model, rng)


@pytest.mark.parametrize("name", ["LeakyRelu", "HardSigmoid", "Elu", "ThresholdedRelu", "Affine", "ScaledTanh"])
def test_activation_defaults_follow_onnxruntime(rng, name):
    model = make_model(rng, 4, (8,), activations=(acts.SIGMOID, _act(name, default=True), acts.TANH),
                       scale=0.5)
    check(model, rng)


def test_bidirectional_with_different_activations_per_direction(rng):
    model = make_model(rng, 6, (10,), direction="bidirectional")
    rev = model.layers[0].directions[1]
    rev.activations = (_act("HardSigmoid"), _act("Softsign"), _act("ScaledTanh"))
    model = le.Model(model.layers)
    check(model, rng)


@pytest.mark.parametrize("clip", [0.5, 3.0])
def test_clip(rng, clip):
    check(make_model(rng, 7, (9,), clip=clip, peep=True, scale=3.0), rng)


def test_input_forget(rng):
    check(make_model(rng, 7, (9,), input_forget=True), rng)


def test_peepholes(rng):
    check(make_model(rng, 7, (33,), peep=True), rng)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_with_lengths(rng, direction):
    model = make_model(rng, 5, (11,), direction=direction, peep=True)
    check(model, rng, B=4, lengths=np.array([T, 37, 0, 1]))


def test_stacked_layers_of_different_sizes_and_directions(rng):
    model = make_model(rng, 6, (40, 17, 70), direction=["bidirectional", "forward", "reverse"],
                       peep=[False, True, False], clip=[None, 2.0, None])
    check(model, rng, B=3, lengths=np.array([T, 50, 64]))


@pytest.mark.parametrize("H", [1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5])
def test_hidden_sizes_around_the_block_size(rng, H):
    check(make_model(rng, 3, (H,)), rng)


def test_layout_1(rng):
    """onnxruntime refuses layout=1; to_onnx wraps layout-0 nodes in Transposes."""
    model = make_model(rng, 5, (12, 7), direction="bidirectional", layout=1)
    check(model, rng, B=3, lengths=np.array([T, 10, 99]))


@pytest.mark.parametrize("act", [None, "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Relu"])
def test_head(rng, act):
    check(make_model(rng, 5, (16,), head=6, head_act=act), rng)


def test_embedding_and_head(rng):
    check(make_model(rng, 8, (24, 24), vocab=50, head=50, head_act="LogSoftmax"), rng, B=3)


@pytest.mark.parametrize("proj", [4, 13])
def test_proj_size_vs_reference(rng, proj):
    """ONNX cannot express proj_size: the reference is the oracle."""
    model = make_model(rng, 6, (20, 9), proj=[proj, None], direction=["bidirectional", "forward"],
                       peep=True)
    check(model, rng, B=2, lengths=np.array([T, 40]), ort=False)


def test_without_initial_state(rng):
    check(make_model(rng, 5, (12,), direction="bidirectional"), rng, state=False)


def test_unbatched_input_equals_batch_of_one(rng):
    model = make_model(rng, 5, (12, 8))
    X = rand(rng, 30, 5)
    eng = le.Engine(model)
    Y1, (h1, c1) = eng.run(X)
    Yb, (hb, cb) = eng.run(X[:, None])
    assert Y1.shape == (30, 8) and [a.shape for a in h1] == [(12,), (8,)]
    assert np.array_equal(Y1, Yb[:, 0]) and all(np.array_equal(a, b[0]) for a, b in zip(h1, hb))


def test_large_hidden_size(rng):
    check(make_model(rng, 64, (256,)), rng, B=1, T=100)


@pytest.mark.parametrize("H", [1, 33, 100, 2 * BLOCK])
def test_wide_panels_match(rng, monkeypatch, H):
    """Cells over packing.WIDE_BYTES use the 4-group kernel and 128-row padding; forcing
    the threshold to 0 runs small models through that path."""
    from lstm_engine import packing

    model = make_model(rng, 7, (H, 9), direction=["bidirectional", "forward"], peep=True)
    monkeypatch.setattr(packing, "WIDE_BYTES", 0)
    eng = le.Engine(model)
    from lstm_engine.kernels.layout import C_WIDE

    assert (eng._packed.meta[1:, C_WIDE] == 3).all()  # steps and recurrences both wide
    check(model, rng, B=2, lengths=np.array([T, 31]), ort=False)
    X = rand(rng, 20, 7)
    s = le.Engine(make_model(rng, 7, (H, 5))).open_stream()  # streaming steps on wide panels
    Yr, _ = reference.run(s._engine.model, X[:, None])
    assert maxdiff(np.stack([s.step(x) for x in X]), Yr[:, 0]) <= TOL
