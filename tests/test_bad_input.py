"""Every refused input names expected vs actual and leaves the state exactly as it was."""
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand


@pytest.fixture
def stream(rng):
    s = le.Engine(make_model(rng, 4, (6, 5))).open_stream()
    s.run(rand(rng, 5, 4))  # a non-zero state to protect
    return s


def unchanged(stream, action, match):
    before = stream.snapshot()
    with pytest.raises(ValueError, match=match):
        action()
    assert stream.snapshot() == before


@pytest.mark.parametrize("x, match", [
    (np.zeros(5, np.float32), r"expected shape \(4,\), got \(5,\)"),
    (np.zeros((1, 4), np.float32), r"expected shape \(4,\), got \(1, 4\)"),
    (np.float32(1.0), r"expected shape \(4,\), got \(\)"),
    (np.array(["a", "b", "c", "d"]), "real numbers"),
    (np.array([1, 2, 3, 4j]), "real numbers"),
    ([None, 1, 2, 3], "real numbers"),
    (np.array([0, np.nan, 0, 0], np.float32), "NaN"),
    (np.array([0, 0, np.inf, 0]), "NaN or infinity"),
])
def test_step_refuses(stream, x, match):
    unchanged(stream, lambda: stream.step(x), match)


@pytest.mark.parametrize("X, match", [
    (np.zeros((3, 5), np.float32), r"expected shape \(T, 4\), got \(3, 5\)"),
    (np.zeros((3, 1, 4), np.float32), r"expected shape \(T, 4\)"),
    (np.zeros(4, np.float32), r"got \(4,\)"),
    (np.array([[0, 0, 0, 0], [0, 0, 0, -np.inf]]), "NaN or infinity"),
])
def test_run_refuses(stream, X, match):
    unchanged(stream, lambda: stream.run(X), match)


def test_nonfinite_late_in_a_chunk_changes_nothing(stream, rng):
    X = rand(rng, 50, 4)
    X[49, 3] = np.nan
    unchanged(stream, lambda: stream.run(X), "NaN")


def test_engine_run_refuses(rng):
    eng = le.Engine(make_model(rng, 4, (6,)))
    X = rand(rng, 5, 2, 4)
    with pytest.raises(ValueError, match=r"expected shape \(T, 4\) or \(T, B, 4\), got \(5, 2, 3\)"):
        eng.run(X[..., :3])
    with pytest.raises(ValueError, match=r"lengths: every value must be in \[0, 5\]"):
        eng.run(X, lengths=[6, 1])
    with pytest.raises(ValueError, match="lengths: expected 2 integer"):
        eng.run(X, lengths=[1.5, 1])
    with pytest.raises(ValueError, match=r"state h\[0\]: expected shape \(2, 6\), got \(6,\)"):
        eng.run(X, state=([np.zeros(6)], [np.zeros(6)]))
    with pytest.raises(ValueError, match=r"expected 1 arrays"):
        eng.run(X, state=([], []))
    with pytest.raises(ValueError, match=r"state c\[0\].*NaN"):
        eng.run(X, state=([np.zeros((2, 6))], [np.full((2, 6), np.nan)]))
    X[4, 1, 0] = np.nan  # a NaN in a padded frame is not read
    Y, _ = eng.run(X, lengths=[5, 4])
    assert np.isfinite(Y).all() and not Y[4, 1].any()


def test_open_stream_state_checks(rng):
    eng = le.Engine(make_model(rng, 4, (6,)))
    with pytest.raises(ValueError, match=r"state h\[0\]: expected shape \(6,\), got \(5,\)"):
        eng.open_stream(state=([np.zeros(5)], [np.zeros(6)]))
    with pytest.raises(ValueError, match=r"expected \(h, c\)"):
        eng.open_stream(state=np.zeros(6))


@pytest.fixture
def token_stream(rng):
    s = le.Engine(make_model(rng, 4, (6,), vocab=10)).open_stream()
    s.step(3)
    return s


@pytest.mark.parametrize("tok, match", [
    (10, r"token id 10 is outside \[0, 10\)"),
    (-1, r"outside"),
    (np.int64(12), "outside"),
    (2.0, "one integer id"),
    (True, "one integer id"),
    ("3", "one integer id"),
    (np.array([1, 2]), "one integer id"),
])
def test_token_step_refuses(token_stream, tok, match):
    unchanged(token_stream, lambda: token_stream.step(tok), match)


def test_token_run_refuses(token_stream):
    unchanged(token_stream, lambda: token_stream.run(np.array([1, 2, 10])), r"\[0, 10\)")
    unchanged(token_stream, lambda: token_stream.run(np.array([1.0, 2.0])), "integer ids")
    unchanged(token_stream, lambda: token_stream.run(np.array([[1, 2]])), r"shaped \(T,\)")


def test_engine_arguments(rng):
    model = make_model(rng, 4, (6,))
    with pytest.raises(ValueError, match="precision 'fp16'"):
        le.Engine(model, precision="fp16")
    with pytest.raises(ValueError, match="threads"):
        le.Engine(model, threads=0)
    with pytest.raises(TypeError, match="lstm_engine.Model"):
        le.Engine("model.onnx")
