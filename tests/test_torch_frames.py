"""Torch tensors as inputs: CPU tensors (even ones tracking gradients) give what the
numpy array gives; a tensor on another device is refused naming the fix."""
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand

torch = pytest.importorskip("torch")


def grad(a):
    return torch.tensor(a, requires_grad=True)


def as_grad(state):
    return tuple([grad(a) for a in part] for part in state)


def flat(result):
    Y, (h, c) = result
    return [Y, *h, *c]


def test_cpu_tensors_give_the_numpy_results(rng):
    eng = le.Engine(make_model(rng, 6, (8, 5), head=3))
    X, B = rand(rng, 9, 6), rand(rng, 9, 2, 6)
    state = ([rand(rng, 8), rand(rng, 5)], [rand(rng, 8), rand(rng, 5)])
    a, b = eng.open_stream(state=state), eng.open_stream(state=as_grad(state))
    assert np.array_equal(np.stack([a.step(x) for x in X[:4]]), np.stack([b.step(grad(x)) for x in X[:4]]))
    assert np.array_equal(a.run(X[4:]), b.run(grad(X[4:])))
    assert all(np.array_equal(p, q) for p, q in zip(a.state[0] + a.state[1], b.state[0] + b.state[1]))
    pa, pb = [eng.open_stream() for _ in range(2)], [eng.open_stream() for _ in range(2)]
    assert np.array_equal(eng.step_many(pa, B[0]), eng.step_many(pb, grad(B[0])))
    state = ([rand(rng, 2, 8), rand(rng, 2, 5)], [rand(rng, 2, 8), rand(rng, 2, 5)])
    want = eng.run(B, state=state, lengths=np.array([9, 4]))
    got = eng.run(grad(B), state=as_grad(state), lengths=torch.tensor([9, 4]))
    assert all(np.array_equal(p, q) for p, q in zip(flat(want), flat(got)))


def test_token_ids_as_tensors(rng):
    eng = le.Engine(make_model(rng, 4, (8,), vocab=10, head=10))
    ids = np.array([3, 1, 9, 0])
    a, b = eng.open_stream(), eng.open_stream()
    assert np.array_equal(a.step(3), b.step(torch.tensor(3)))
    assert np.array_equal(a.run(ids), b.run(torch.tensor(ids)))
    assert np.array_equal(eng.run(ids)[0], eng.run(torch.tensor(ids))[0])


def test_bfloat16_tensors_are_read_as_their_values(rng):
    eng = le.Engine(make_model(rng, 6, (8,)))
    x = torch.tensor(rand(rng, 6)).to(torch.bfloat16)
    assert np.array_equal(eng.open_stream().step(x), eng.open_stream().step(x.float().numpy()))


def test_tensors_elsewhere_are_refused_naming_the_fix(rng):
    eng = le.Engine(make_model(rng, 6, (8,)))
    s = eng.open_stream()
    s.step(rand(rng, 6))
    before = s.snapshot()
    meta = torch.zeros(6, device="meta")
    for attempt in (lambda: s.step(meta), lambda: s.run(meta[None]), lambda: eng.step_many([s], meta[None]),
                    lambda: eng.run(meta[None]), lambda: eng.open_stream(state=([meta[:8]], [meta[:8]]))):
        with pytest.raises(ValueError, match=r"device 'meta'.*\.cpu\(\)"):
            attempt()
    with pytest.raises(ValueError, match="to_dense"):
        s.step(torch.zeros(6).to_sparse())
    assert s.snapshot() == before
