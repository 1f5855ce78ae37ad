"""Engine(threads=N) splits hidden units across cores: same numbers as one thread."""
import numba
import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, maxdiff, rand
from lstm_engine.kernels.layout import BLOCK


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_same_numbers(rng, threads):
    # H = 3.5 blocks: the last block short, and blocks split unevenly over the threads
    H = 3 * BLOCK + BLOCK // 2
    model = make_model(rng, 40, (H, 130), peep=[True, False], clip=[3.0, None], head=7, head_act="Softmax")
    one, many = le.Engine(model), le.Engine(model, threads=threads)
    assert one.threads == 1 and many.threads == min(threads, numba.config.NUMBA_NUM_THREADS)
    X = rand(rng, 60, 40)
    a, b = one.open_stream(), many.open_stream()
    assert maxdiff(np.stack([a.step(x) for x in X]), np.stack([b.step(x) for x in X])) <= 1e-6
    assert maxdiff(one.open_stream().run(X), many.open_stream().run(X)) <= 1e-6
    assert all(maxdiff(p, q) <= 1e-6 for p, q in zip(a.state[0] + a.state[1], b.state[0] + b.state[1]))


def test_threads_offline_bidirectional_with_lengths(rng):
    model = make_model(rng, 30, (150,), direction="bidirectional", proj=40, peep=True)
    X = rand(rng, 50, 3, 30)
    lengths = np.array([50, 17, 0])
    Y1, (h1, c1) = le.Engine(model).run(X, lengths=lengths)
    Y2, (h2, c2) = le.Engine(model, threads=2).run(X, lengths=lengths)
    assert maxdiff(Y1, Y2) <= 1e-6 and all(maxdiff(p, q) <= 1e-6 for p, q in zip(h1 + c1, h2 + c2))


def test_small_layers_keep_one_thread(rng):
    assert le.Engine(make_model(rng, 16, (64,)), threads=2).threads == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts(rng, bad):
    with pytest.raises(ValueError, match="threads"):
        le.Engine(make_model(rng, 4, (8,)), threads=bad)


def test_threads_are_at_most_numbas_pool(rng):
    e = le.Engine(make_model(rng, 64, (160,)), threads=1000)
    assert e.threads == numba.config.NUMBA_NUM_THREADS
    s = e.open_stream()
    x = rng.standard_normal(64).astype(np.float32)
    assert np.array_equal(s.step(x), le.Engine(e.model).open_stream().step(x))  # the same numbers
