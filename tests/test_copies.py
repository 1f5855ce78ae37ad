"""A Stream belongs to its engine and process: copies are refused; an Engine pickles
(and deep-copies) by being rebuilt from its model."""
import copy
import pickle

import numpy as np
import pytest

import lstm_engine as le
from fresh_process import run_python
from helpers import make_model, rand


@pytest.fixture
def engine(rng):
    # threads=2 is used: big enough a layer (4H(I+H) >= PARALLEL_MIN_WEIGHTS)
    return le.Engine(make_model(rng, 40, (150,), peep=True, head=3), threads=2)


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps, lambda s: pickle.dumps((s._engine, s))])
def test_stream_refuses_to_be_copied(engine, rng, how):
    s = engine.open_stream()
    s.step(rand(rng, 40))
    before = s.snapshot()
    with pytest.raises(TypeError, match=r"snapshot\(\).*engine.restore"):
        how(s)
    assert s.snapshot() == before


@pytest.mark.parametrize("how", [lambda e: pickle.loads(pickle.dumps(e)), copy.deepcopy, copy.copy])
def test_engine_copy_is_rebuilt_and_continues_streams(engine, rng, how):
    X = rand(rng, 12, 40)
    s = engine.open_stream()
    s.run(X[:5])
    e2 = how(engine)
    assert e2 is not engine and e2._packed is not engine._packed
    assert (e2.precision, e2.threads) == (engine.precision, engine.threads) == ("fp32", 2)
    assert e2.model.fingerprint() == engine.model.fingerprint()
    s2 = e2.restore(s.snapshot())
    assert np.array_equal(s2.run(X[5:]), s.run(X[5:]))


def test_engine_keeps_the_threads_it_was_asked_for(rng):
    small = le.Engine(make_model(rng, 4, (8,)), precision="int8", threads=3)
    assert small.threads == 1  # too small to gain; a copy decides the same way again
    e2 = pickle.loads(pickle.dumps(small))
    assert (e2.precision, e2.threads, e2._threads_asked) == ("int8", 1, 3)


ELSEWHERE = """
import pickle, sys
engine, blob, X = pickle.load(sys.stdin.buffer)
sys.stdout.buffer.write(pickle.dumps(engine.restore(blob).run(X)))
"""


def test_engine_ships_to_another_process(engine, rng):
    X = rand(rng, 10, 40)
    s = engine.open_stream()
    s.run(X[:4])
    out = run_python(ELSEWHERE, pickle.dumps((engine, s.snapshot(), X[4:])))
    assert np.array_equal(pickle.loads(out), s.run(X[4:]))
