"""Random configurations (hypothesis): engine == reference, and step x T == run == Engine.run."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_engine as le
from lstm_engine import activations as acts
from lstm_engine import reference
from helpers import TOL, make_model, rand, scaled_err

# bounded activations keep random stacks from overflowing over long sequences
BOUNDED = ["Sigmoid", "Tanh", "HardSigmoid", "Softsign", "ScaledTanh"]


@st.composite
def configs(draw):
    n = draw(st.integers(1, 3))
    return dict(
        I=draw(st.integers(1, 40)),
        hidden=tuple(draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))),
        direction=draw(st.lists(st.sampled_from(["forward", "reverse", "bidirectional"]), min_size=n, max_size=n)),
        proj=draw(st.lists(st.one_of(st.none(), st.integers(1, 20)), min_size=n, max_size=n)),
        peep=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        clip=draw(st.lists(st.one_of(st.none(), st.floats(0.1, 5)), min_size=n, max_size=n)),
        input_forget=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        activations=[tuple(acts.make(draw(st.sampled_from(BOUNDED)), 0.9, 0.8) for _ in range(3)) for _ in range(n)],
        head=draw(st.one_of(st.none(), st.integers(1, 9))),
        head_act=draw(st.sampled_from([None, "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Relu"])),
        layout=draw(st.sampled_from([0, 1])),
        seed=draw(st.integers(0, 2**31)),
        T=draw(st.integers(0, 30)),
        B=draw(st.integers(1, 3)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_engine_matches_reference(cfg):
    rng = np.random.default_rng(cfg.pop("seed"))
    T, B = cfg.pop("T"), cfg.pop("B")
    model = make_model(rng, **cfg)
    X = rand(rng, T, B, cfg["I"])
    if model.layout == 1:
        X = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    lengths = rng.integers(0, T + 1, B)
    h0 = [rand(rng, B, P) for P, _ in model.state_sizes]
    c0 = [rand(rng, B, H) for _, H in model.state_sizes]
    Y, (h, c) = le.Engine(model).run(X, (h0, c0), lengths)
    Yr, (hr, cr) = reference.run(model, X, h0, c0, lengths)
    assert scaled_err(Y, Yr) <= TOL
    assert all(scaled_err(a, b) <= TOL for a, b in zip(h + c, hr + cr))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(1, 50), min_size=1, max_size=3), st.integers(0, 2**31),
       st.lists(st.integers(0, 12), min_size=1, max_size=5))
def test_step_run_offline_agree(I, hidden, seed, cuts):
    rng = np.random.default_rng(seed)
    eng = le.Engine(make_model(rng, I, tuple(hidden), peep=True))
    X = rand(rng, sum(cuts), I)
    s, parts, t = eng.open_stream(), [], 0
    for k, n in enumerate(cuts):  # alternate chunked runs and single steps
        part = X[t:t + n]
        parts.append(s.run(part) if k % 2 == 0 or n == 0 else np.stack([s.step(x) for x in part]))
        t += n
    Yo, _ = eng.run(X)
    assert scaled_err(np.concatenate(parts), Yo) <= 1e-6
