"""Threads and kernel types: engines built while other threads step, the one array type
the kernels see whatever a frame looks like, and one stream called from several threads."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lstm_engine as le
from fresh_process import run_python
from helpers import make_model, rand
from lstm_engine.kernels.lstm import _run, _step, _step_many

BUSY = "in use by another thread"

FIRST_ENGINES = """
import threading
import numpy as np
import lstm_engine as le
from helpers import make_model

model = make_model(np.random.default_rng(0), 16, (32,), head=3)
start = threading.Barrier(3)
out = {}

def build(precision):
    start.wait()
    try:
        out[precision] = le.Engine(model, precision=precision).open_stream().step(np.ones(16, np.float32))
    except Exception as e:
        out[precision] = f"{type(e).__name__}: {e}"

threads = [threading.Thread(target=build, args=(p,)) for p in ("fp32", "bf16", "int8")]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted((p, v if isinstance(v, str) else v.shape) for p, v in out.items()))
"""


def test_first_engines_built_by_threads_at_once():
    # a fresh process: each precision's kernels are compiled (or loaded) for the first time
    out = run_python(FIRST_ENGINES).decode()
    assert out.strip() == "[('bf16', (3,)), ('fp32', (3,)), ('int8', (3,))]", out


STEP_WHILE_BUILDING = """
import threading
import numpy as np
import lstm_engine as le
from helpers import make_model, rand
from lstm_engine.kernels.lstm import _step

rng = np.random.default_rng(0)
eng = le.Engine(make_model(rng, 16, (32,), head=3))
X = rand(rng, 16, 2)
frames = [X[:, 0], np.asfortranarray(X)[:, 0], X[:, 0].copy()]  # strided, strided, contiguous
frames[2].flags.writeable = False
want = eng.open_stream().step(np.ascontiguousarray(X[:, 0]))
stop, problems = threading.Event(), set()

def stepper():
    while not stop.is_set():
        for x in frames:
            try:
                if not np.array_equal(eng.open_stream().step(x), want):
                    problems.add("wrong output")
            except Exception as e:
                problems.add(f"{type(e).__name__}: {e}")
        try:
            eng.open_stream().step(X[:, :1].T)
            problems.add("a (1, I) frame was accepted")
        except ValueError:
            pass
        except Exception as e:
            problems.add(f"(1, I) frame: {type(e).__name__}: {e}")

t = threading.Thread(target=stepper)
t.start()
for precision in ("bf16", "int8", "fp32"):
    le.Engine(make_model(rng, 16, (32,), head=3), precision=precision)
stop.set()
t.join()
print(sorted(problems), sorted({str(sig[0]) for sig in _step.signatures}))
"""


def test_engines_built_while_another_thread_steps_odd_frames():
    out = run_python(STEP_WHILE_BUILDING).decode()
    assert out.strip() == "[] ['array(float32, 1d, C)']", out  # no strided or read-only specialisation


def _signatures():
    return {k: set(map(str, f.signatures)) for k, f in (("step", _step), ("step_many", _step_many), ("run", _run))}


def test_kernels_see_one_array_type(rng):
    # every layout a user may pass reaches the kernels as float32, C-contiguous, writable
    eng = le.Engine(make_model(rng, 6, (10,), head=2))
    X = rand(rng, 4, 6)
    readonly = X.copy()
    readonly.flags.writeable = False
    odd = [X.astype(np.float64), X.tolist(), np.asfortranarray(X), readonly,
           np.repeat(X, 2, axis=1)[:, ::2], X.astype(">f4")]
    want_steps = [eng.open_stream().step(x) for x in X]
    want_run = eng.open_stream().run(X)
    want_many = eng.step_many([eng.open_stream() for _ in X], X)
    want_offline, _ = eng.run(X[:, None])
    before = _signatures()
    for A in odd:
        frames = A if isinstance(A, list) else list(A)  # rows: strided, read-only, big-endian views
        assert all(np.array_equal(eng.open_stream().step(x), y) for x, y in zip(frames, want_steps))
        assert np.array_equal(eng.open_stream().run(A), want_run)
        assert np.array_equal(eng.step_many([eng.open_stream() for _ in X], A), want_many)
        assert np.array_equal(eng.run(np.asarray(A)[:, None])[0], want_offline)
    assert _signatures() == before


def test_one_stream_from_many_threads_is_refused_never_corrupted(rng):
    # H=256: a step is long enough (GIL released) for calls from other threads to collide
    I, n_threads, calls = 32, 3, 300
    eng = le.Engine(make_model(rng, I, (256,), head=4))
    shared = eng.open_stream()
    frames = rand(rng, n_threads, calls, I)
    done = [[] for _ in range(n_threads)]  # per thread, in order: (kind, frame, output) of accepted calls
    refused = [0] * n_threads
    start = threading.Barrier(n_threads)
    call = {
        "step": lambda s, x, own: s.step(x),
        "run": lambda s, x, own: s.run(x[None])[0],
        "step_many": lambda s, x, own: eng.step_many([own, s], np.stack([x, x]))[1],
    }

    def worker(t):
        own = eng.open_stream()
        start.wait()
        for k in range(calls):
            kind = list(call)[(k + t) % 3]
            try:
                y = call[kind](shared, frames[t, k], own)
            except RuntimeError as e:
                assert BUSY in str(e)
                refused[t] += 1
            else:
                done[t].append((kind, frames[t, k], y))

    with ThreadPoolExecutor(n_threads) as ex:
        list(ex.map(worker, range(n_threads)))
    assert sum(refused) > 0, "no call collided: the test did not test anything"
    # the accepted calls ran one at a time: some interleaving of the threads' sequences
    # replays them exactly, output for output (the first of them to match each output)
    replay, heads = eng.open_stream(), [0] * n_threads
    own = eng.open_stream()
    for _ in range(sum(map(len, done))):
        for t in range(n_threads):
            if heads[t] == len(done[t]):
                continue
            kind, x, y = done[t][heads[t]]
            probe = eng.restore(replay.snapshot())
            if np.array_equal(call[kind](probe, x, own), y):
                replay, heads[t] = probe, heads[t] + 1
                break
        else:
            pytest.fail("an accepted call's output follows from no sequential order of the calls")
    assert replay.snapshot() == shared.snapshot()


def test_a_busy_stream_refuses_every_call(rng):
    eng = le.Engine(make_model(rng, 32, (256,), head=4))
    s, other = eng.open_stream(), eng.open_stream()
    X = rand(rng, 20000, 32)  # a chunk that runs for a good fraction of a second
    started = threading.Event()

    def long_run():
        started.set()
        s.run(X)

    t = threading.Thread(target=long_run)
    t.start()
    started.wait()
    time.sleep(0.02)
    for attempt in (lambda: s.step(X[0]), lambda: s.run(X[:2]), lambda: eng.step_many([other, s], X[:2]),
                    s.reset, s.snapshot, lambda: s.state):
        with pytest.raises(RuntimeError, match=BUSY):
            attempt()
    assert t.is_alive()  # every refusal above overlapped the run
    t.join()
    ref = eng.open_stream()
    ref.run(X)
    assert s.snapshot() == ref.snapshot()
    assert other.snapshot() == eng.open_stream().snapshot()  # step_many refused as a whole
