"""Every way through the kernels computes the same sums in the same order, (W.x + R.h)
+ bias: streamed steps, a chunk, step_many beside other streams and the offline run
give the same bits, in every precision, and saturate alike."""
import numpy as np
import pytest
from helpers import make_model

import lstm_engine as le
import lstm_engine.reference as ref
from lstm_engine import activations as acts


def _paths(engine, X, rng):
    """Outputs of X through each path, from zero state, and the final h of each."""
    s = engine.open_stream()
    step = np.stack([s.step(x) for x in X])
    c = engine.open_stream()
    chunk = np.concatenate([c.run(X[:3]), c.run(X[3:])])  # two chunks: the state carries over
    others = [engine.open_stream() for _ in range(6)]
    target = engine.open_stream()
    many = []
    for x in X:  # the stream sits among others that get different frames
        frames = rng.standard_normal((7, X.shape[1])).astype(np.float32)
        frames[3] = x
        many.append(engine.step_many(others[:3] + [target] + others[3:], frames)[3])
    offline, (h, _) = engine.run(X)
    return {"step": (step, s.state[0]), "chunk": (chunk, c.state[0]), "step_many": (np.stack(many), target.state[0]),
            "run": (offline, h)}


MODELS = {
    "peepholes, clip, head": {"I": 13, "hidden": (70, 33), "peep": [True, False], "clip": [None, 2.0], "head": 5},
    "projection, other activations, input_forget": {
        "I": 9, "hidden": (40, 20), "proj": [11, None], "input_forget": [True, False],
        "activations": [("HardSigmoid", "Softsign", "Elu"), ("Sigmoid", "Tanh", "Tanh")]},
    "threads=2": {"I": 64, "hidden": (130,), "threads": 2},
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "int8-dynamic"])
def test_every_path_gives_the_same_bits(rng, precision, kind):
    spec = dict(MODELS[kind])
    I, threads = spec.pop("I"), spec.pop("threads", 1)
    if "activations" in spec:
        spec["activations"] = [tuple(acts.make(n) for n in names) for names in spec["activations"]]
    m = make_model(rng, I, **spec)
    X = rng.standard_normal((11, I)).astype(np.float32)
    engine = le.Engine(m, precision=precision, threads=threads)
    assert engine.threads == threads
    got = _paths(engine, X, rng)
    y0, h0 = got["step"]
    for name, (y, h) in got.items():
        assert np.array_equal(y, y0), name
        for a, b in zip(h, h0):
            assert np.array_equal(a, b), name


def test_saturated_gates_stay_finite_in_every_path(rng):
    """W = R = 1e38 and frames of +-1e30: each product overflows to +-inf. Summed as one
    chain that stays inf; summed apart (W.x + b, then + R.h), inf - inf gave NaN."""
    m = make_model(rng, 4, hidden=(8,))
    d = m.layers[0].directions[0]
    d.W[:] = 1e38
    d.R[:] = -1e38
    m = le.Model(m.layers, m.embedding, m.head, m.layout)
    X = np.array([[1e30, 1e30, 1e30, 1e30], [-1e30, 1e30, -1e30, 1e30], [1e30, -1e30, 1e30, 1e30]] * 2,
                 np.float32)
    got = _paths(le.Engine(m), X, rng)
    y0 = got["step"][0]
    assert np.isfinite(y0).all()
    want, _ = ref.run(m, X.astype(np.float64)[:, None])
    assert np.isfinite(want).all()
    for name, (y, h) in got.items():
        assert np.array_equal(y, y0) and all(np.isfinite(a).all() for a in h), name
