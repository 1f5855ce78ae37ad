"""An Engine validates and keeps its own copy of the Model (DESIGN §7: a model changed
after construction is not trusted)."""
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand


@pytest.fixture
def model(rng):
    return make_model(rng, 6, (8, 5), peep=True, head=3)


def _break_peepholes(m):
    m.layers[0].directions[0].peepholes = np.zeros(3 * 8 + 1, np.float32)


def _break_head(m):
    m.head.weight = np.zeros((3, 6), np.float32)


def _nan_in_w(m):
    m.layers[1].directions[0].W[2, 3] = np.nan


def _inf_in_bias(m):
    m.layers[0].directions[0].b[0] = np.inf


@pytest.mark.parametrize("change, match", [
    (_break_peepholes, r"peepholes: expected shape \(24,\)"),
    (_break_head, r"head.weight: expected shape \(O, 5\)"),
    (_nan_in_w, r"layers\[1\].directions\[0\].W: contains NaN"),
    (_inf_in_bias, r"b: contains NaN or infinity"),
])
def test_a_model_changed_after_construction_is_validated_again(model, change, match):
    change(model)
    with pytest.raises(le.ModelError, match=match):
        le.Engine(model)


def test_the_engine_reads_its_own_copy(model, rng):
    X = rand(rng, 7, 6)
    eng = le.Engine(model)
    before, _ = eng.run(X)
    arrays = [model.layers[0].directions[0].W, model.head.weight]
    assert eng.model is not model and not any(np.shares_memory(a, b) for a in arrays
                                              for b in eng.model._tensors().values())
    for a in arrays:
        a[:] = 0
    model.head = None
    assert np.array_equal(eng.run(X)[0], before)
    assert np.array_equal(eng.open_stream().run(X), before)


def test_a_fingerprint_taken_before_a_change_is_not_trusted(model, rng):
    s = le.Engine(model).open_stream()  # caches the model's fingerprint
    s.step(rand(rng, 6))
    blob = s.snapshot()
    model.layers[0].directions[0].W[0, 0] += 1  # still finite: only the fingerprint can tell
    with pytest.raises(ValueError, match="different model"):
        le.Engine(model).restore(blob)
