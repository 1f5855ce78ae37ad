"""Engine.step_many: N streams, one call, exactly what N separate steps would give."""
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, maxdiff, ort_run, rand, TOL


def states(streams):
    return [s.snapshot() for s in streams]


@pytest.mark.parametrize("precision,threads", [("fp32", 1), ("fp32", 2), ("bf16", 1), ("int8", 2)])
def test_equals_separate_steps_bit_for_bit(rng, precision, threads):
    # stacked, peepholes, a projection, clip and a head: every part of a step
    model = make_model(rng, 24, (150, 70), proj=[None, 40], peep=True, clip=[None, 3.0], head=5,
                       head_act="Softmax")
    eng = le.Engine(model, precision=precision, threads=threads)
    N = 7  # not a multiple of the kernel's three frames
    many = [eng.open_stream() for _ in range(N)]
    each = [eng.open_stream() for _ in range(N)]
    for s in many[:3] + each[:3]:  # streams need not be in step with each other
        s.step(np.ones(24, np.float32))
    for _ in range(6):
        X = rand(rng, N, 24)
        Y = eng.step_many(many, X)
        assert Y.shape == (N, 5) and Y.dtype == np.float32
        assert np.array_equal(Y, np.stack([s.step(x) for s, x in zip(each, X)]))
    assert states(many) == states(each)


def test_matches_onnxruntime_batch(rng):
    model = make_model(rng, 10, (33,), peep=True)
    eng = le.Engine(model)
    streams = [eng.open_stream() for _ in range(5)]
    X = rand(rng, 40, 5, 10)  # (T, B, I): stream b gets X[:, b]
    Y = np.stack([eng.step_many(streams, x) for x in X])
    Yo, _ = ort_run(model, X)
    assert maxdiff(Y, Yo) <= TOL


def test_token_ids_and_any_subset_order(rng):
    model = make_model(rng, 8, (20,), vocab=30, head=30, head_act="LogSoftmax")
    eng = le.Engine(model)
    a, b, c = (eng.open_stream() for _ in range(3))
    ref = {k: eng.open_stream() for k in "abc"}
    for order, ids in ((("a", "b", "c"), [1, 2, 3]), (("c", "a"), [29, 0]), (("b",), [7])):
        streams = [dict(a=a, b=b, c=c)[k] for k in order]
        Y = eng.step_many(streams, np.array(ids))
        assert np.array_equal(Y, np.stack([ref[k].step(t) for k, t in zip(order, ids)]))
    assert states([a, b, c]) == states(list(ref.values()))


def test_no_streams(rng):
    eng = le.Engine(make_model(rng, 4, (8,), head=3))
    assert eng.step_many([], np.zeros((0, 4), np.float32)).shape == (0, 3)


def test_refusals_change_no_stream(rng):
    model = make_model(rng, 4, (8,))
    eng = le.Engine(model)
    s1, s2 = eng.open_stream(), eng.open_stream()
    s1.step(np.ones(4, np.float32))
    before = states([s1, s2])
    other = le.Engine(model).open_stream()
    bad_x = np.ones((2, 4), np.float32)
    bad_x[1, 2] = np.nan
    cases = [
        ([s1, other], np.ones((2, 4)), ValueError, r"streams\[1\]: not a Stream opened on this engine"),
        ([s1, "s2"], np.ones((2, 4)), ValueError, r"streams\[1\]"),
        ([s1, s1], np.ones((2, 4)), ValueError, "more than once"),
        ([s1, s2], np.ones((3, 4)), ValueError, r"expected shape \(2, 4\) for 2 streams, got \(3, 4\)"),
        ([s1, s2], np.ones(4), ValueError, r"expected shape \(2, 4\)"),
        ([s1, s2], bad_x, ValueError, "NaN or infinity"),
        ([s1, s2], np.array([["a"] * 4] * 2), ValueError, "real numbers"),
        (5, np.ones((2, 4)), TypeError, "sequence of Streams"),
    ]
    for streams, X, err, msg in cases:
        with pytest.raises(err, match=msg):
            eng.step_many(streams, X)
        assert states([s1, s2]) == before


def test_token_refusals(rng):
    eng = le.Engine(make_model(rng, 4, (8,), vocab=10))
    s1, s2 = eng.open_stream(), eng.open_stream()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        eng.step_many([s1, s2], [1, 10])
    with pytest.raises(ValueError, match="expected 2 token ids for 2 streams, got 3"):
        eng.step_many([s1, s2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"ids shaped \(N,\)"):
        eng.step_many([s1, s2], [[1], [2]])


def test_reverse_models_refuse(rng):
    eng = le.Engine(make_model(rng, 4, (8,), direction="bidirectional"))
    with pytest.raises(le.ModelError, match="Engine.run"):
        eng.step_many([], np.zeros((0, 4)))
