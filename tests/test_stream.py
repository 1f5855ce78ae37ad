"""Streaming: step x T == run == Engine.run; snapshots; independent streams; state."""
import struct
import zlib

import numpy as np
import pytest

import lstm_engine as le
from helpers import TOL, make_model, maxdiff, ort_run, rand


@pytest.fixture
def model(rng):
    return make_model(rng, 6, (20, 33), peep=[True, False], clip=[None, 4.0], head=5,
                      head_act="Softmax")


def steps(stream, X):
    return np.stack([stream.step(x) for x in X])


def test_step_run_and_offline_agree(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 120, 6)
    Ys = steps(eng.open_stream(), X)
    Yr = eng.open_stream().run(X)
    Yo, _ = eng.run(X)
    assert maxdiff(Ys, Yr) <= 1e-6 and maxdiff(Ys, Yo) <= 1e-6


def test_streamed_steps_match_onnxruntime_over_100_steps(model, rng):
    X = rand(rng, 100, 6)
    Ys = steps(le.Engine(model).open_stream(), X)
    Yo, _ = ort_run(model, X[:, None])
    assert maxdiff(Ys, Yo[:, 0]) <= TOL


def test_chunks_continue_each_other(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 50, 6)
    s = eng.open_stream()
    parts = [s.run(X[:7]), s.run(X[7:8]), s.run(X[8:8]), np.stack([s.step(x) for x in X[8:20]]), s.run(X[20:])]
    assert parts[2].shape == (0, 5)
    assert maxdiff(np.concatenate(parts), eng.run(X)[0]) <= 1e-6


def test_state_matches_offline_final_state(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 30, 6)
    s = eng.open_stream()
    s.run(X)
    h, c = s.state
    _, (ho, co) = eng.run(X)
    assert [a.shape for a in h] == [(20,), (33,)] and all(a.dtype == np.float32 for a in h + c)
    assert all(maxdiff(a, b) <= 1e-6 for a, b in zip(h + c, ho + co))


def test_state_is_a_copy(model, rng):
    s = le.Engine(model).open_stream()
    s.step(rand(rng, 6))
    h, _ = s.state
    h[0][:] = 123.0
    assert not np.any(s.state[0][0] == 123.0)


def test_open_stream_at_a_state_continues_like_offline(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 40, 6)
    s = eng.open_stream()
    s.run(X[:25])
    t = eng.open_stream(state=s.state)
    Yo, _ = eng.run(X[25:], state=s.state)
    assert maxdiff(t.run(X[25:]), Yo) <= 1e-6


def test_snapshot_restore_continues_exactly(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 40, 6)
    s = eng.open_stream()
    s.run(X[:20])
    blob = s.snapshot()
    assert isinstance(blob, bytes)
    rest = le.Engine(model).restore(blob)  # a second engine on an equal model accepts it
    assert np.array_equal(steps(rest, X[20:]), steps(s, X[20:]))


@pytest.mark.parametrize("threads", [1, 2])
def test_restore_after_an_odd_number_of_steps_continues_exactly(rng, threads):
    # steps alternate the order they walk blocks and row sets in; a restored stream
    # starts on the other foot and must still give the same bits
    model = make_model(rng, 40, (150, 70), peep=True, head=3)
    eng = le.Engine(model, threads=threads)
    X = rand(rng, 9, 40)
    s = eng.open_stream()
    steps(s, X[:3])
    rest = eng.restore(s.snapshot())
    assert np.array_equal(steps(rest, X[3:]), steps(s, X[3:]))


def test_snapshot_refuses_other_model_and_damage(model, rng):
    s = le.Engine(model).open_stream()
    s.step(rand(rng, 6))
    blob = s.snapshot()
    other = make_model(rng, 6, (20, 33), peep=[True, False], clip=[None, 4.0], head=5,
                       head_act="Softmax")
    with pytest.raises(ValueError, match="different model"):
        le.Engine(other).restore(blob)
    eng = le.Engine(model)
    for bad, msg in [(blob[:-4], "holds"), (blob[:10], "truncated"), (b"X" + blob[1:], "not an"),
                     (blob[:8] + b"\x09\x00" + blob[10:], "version")]:
        with pytest.raises(ValueError, match=msg):
            eng.restore(bad)
    nan = bytearray(blob[:-4])  # a NaN under a valid checksum: what a buggy writer could send
    nan[-4:] = np.array([np.nan], "<f4").tobytes()
    with pytest.raises(ValueError, match="NaN"):
        eng.restore(bytes(nan) + struct.pack("<I", zlib.crc32(nan)))


def test_every_single_byte_change_of_a_snapshot_is_refused(model, rng):
    eng = le.Engine(model)
    s = eng.open_stream()
    s.run(rand(rng, 5, 6))
    blob = s.snapshot()
    assert eng.restore(blob).snapshot() == blob
    for i in range(len(blob)):
        for v in range(256):
            if v != blob[i]:
                with pytest.raises(ValueError):
                    eng.restore(blob[:i] + bytes([v]) + blob[i + 1:])


def test_interleaved_streams_do_not_affect_each_other(model, rng):
    eng = le.Engine(model)
    XA, XB = rand(rng, 30, 6), rand(rng, 30, 6)
    a, b = eng.open_stream(), eng.open_stream()
    YA, YB = [], []
    for xa, xb in zip(XA, XB):
        YA.append(a.step(xa))
        YB.append(b.step(xb))
    assert np.array_equal(np.stack(YA), steps(eng.open_stream(), XA))
    assert np.array_equal(np.stack(YB), steps(eng.open_stream(), XB))


def test_streams_in_threads(model, rng):
    from concurrent.futures import ThreadPoolExecutor

    eng = le.Engine(model)
    Xs = [rand(rng, 200, 6) for _ in range(4)]
    want = [steps(eng.open_stream(), X) for X in Xs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda X: steps(eng.open_stream(), X), Xs))
    assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_reset(model, rng):
    eng = le.Engine(model)
    X = rand(rng, 10, 6)
    s = eng.open_stream()
    first = steps(s, X)
    s.reset()
    assert all(not a.any() for a in s.state[0] + s.state[1])
    assert np.array_equal(steps(s, X), first)


def test_output_is_not_overwritten_by_the_next_step(model, rng):
    s = le.Engine(model).open_stream()
    y1 = s.step(rand(rng, 6))
    keep = y1.copy()
    s.step(rand(rng, 6))
    assert np.array_equal(y1, keep)


def test_inputs_are_converted_once(model, rng):
    eng = le.Engine(model)
    x = rand(rng, 6).astype(np.float64)
    a, b, c = eng.open_stream(), eng.open_stream(), eng.open_stream()
    ya = a.step(x)
    yb = b.step(list(x))
    yc = c.step(np.repeat(x.astype(np.float32), 2)[::2])  # non-contiguous view
    ro = x.astype(np.float32)
    ro.flags.writeable = False
    yd = eng.open_stream().step(ro)
    assert np.array_equal(ya, yb) and np.array_equal(ya, yc) and np.array_equal(ya, yd)


def test_token_model_streams(rng):
    model = make_model(rng, 8, (16,), vocab=30, head=30, head_act="LogSoftmax")
    eng = le.Engine(model)
    ids = rng.integers(0, 30, 25)
    Ys = np.stack([eng.open_stream().step(int(ids[0]))] +
                  [0 * eng.open_stream().step(0)])  # shapes only
    assert Ys.shape == (2, 30)
    s = eng.open_stream()
    Y1 = np.stack([s.step(t) for t in ids])  # numpy integers
    Y2 = eng.open_stream().run(ids)
    Y3, _ = eng.run(ids)
    Yo, _ = ort_run(model, ids[:, None])
    assert maxdiff(Y1, Y2) <= 1e-6 and maxdiff(Y1, Y3) <= 1e-6 and maxdiff(Y1, Yo[:, 0]) <= TOL


def test_reverse_models_cannot_stream(rng):
    eng = le.Engine(make_model(rng, 4, (8, 8), direction=["forward", "bidirectional"]))
    with pytest.raises(le.ModelError, match=r"layers \[1\].*Engine.run"):
        eng.open_stream()
    with pytest.raises(le.ModelError, match="Engine.run"):
        eng.restore(b"")
