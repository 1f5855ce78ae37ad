"""lstm_engine.serving.Batcher with real coroutines: order, batching, isolation of bad
frames, backpressure, eviction and resumption, close, a store; behaviour, no timings."""
import asyncio

import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand
from lstm_engine.serving import Batcher, Moved, Overloaded

I = 6


@pytest.fixture
def engine(rng):
    return le.Engine(make_model(rng, I, (16, 12), head=3))


def reference(engine, frames, start=None):
    """Outputs of one Stream stepped through `frames`, from snapshot `start` or zero."""
    s = engine.open_stream() if start is None else engine.restore(start)
    return [s.step(x) for x in frames]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))  # a hang fails, never blocks the suite


async def until(condition, seconds=10.0):
    """Poll `condition` while the event loop runs (eviction happens on the batcher's clock)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_each_stream_in_order_bit_for_bit(engine, rng):
    X = rand(rng, 10, 8, I)  # 10 streams, 8 frames each

    async def main():
        b = Batcher(engine, max_pending=8)

        async def lockstep(i):  # one frame at a time
            return [await b.step(i, x) for x in X[i]]

        async def burst(i):  # every frame queued at once: they run in 8 batches, in order
            return await asyncio.gather(*[b.step(i, x) for x in X[i]])

        outs = await asyncio.gather(*[(lockstep if i % 2 else burst)(i) for i in range(10)])
        await b.aclose()
        return outs

    for i, out in enumerate(run(main())):
        assert all(np.array_equal(y, r) for y, r in zip(out, reference(engine, X[i])))


def test_frames_arriving_together_share_a_batch(engine, rng):
    X = rand(rng, 32, 20, I)

    async def main():
        b = Batcher(engine)

        async def client(i):
            for x in X[i]:
                await b.step(i, x)

        await asyncio.gather(*[client(i) for i in range(32)])
        stats = b.stats()
        await b.aclose()
        return stats

    stats = run(main())
    assert stats["frames"] == 32 * 20 and stats["mean_batch"] > 1
    assert stats["batches"] < stats["frames"] and stats["streams"] == 32
    assert stats["queue_wait_p99_ms"] >= stats["queue_wait_p50_ms"] >= 0


@pytest.mark.parametrize("bad", [[3], [0, 5, 7]])
def test_bad_frame_fails_only_its_caller(engine, rng, bad):
    X = rand(rng, 8, 2, I)

    async def main():
        b = Batcher(engine)
        first = [b.step(i, X[i, 0] if i not in bad else np.full(I, np.nan, np.float32)) for i in range(8)]
        got = await asyncio.gather(*first, return_exceptions=True)
        second = await asyncio.gather(*[b.step(i, X[i, 1]) for i in range(8)])
        stats = b.stats()
        await b.aclose()
        return got, second, stats

    got, second, stats = run(main())
    for i in range(8):
        if i in bad:  # refused, its stream unchanged: its next frame is its first
            assert isinstance(got[i], ValueError) and "NaN" in str(got[i])
            assert np.array_equal(second[i], reference(engine, X[i, 1:])[0])
        else:
            assert np.array_equal([got[i], second[i]], reference(engine, X[i]))
    assert stats["failed"] == len(bad) and stats["frames"] == 16 - len(bad)


def test_malformed_frames_raise_at_the_call(engine):
    async def main():
        b = Batcher(engine)
        for x in (np.zeros(I + 1), [[0.0] * I], "abc", np.zeros(I, complex)):
            with pytest.raises(ValueError):
                b.step("k", x)
        assert len(b) == 0  # nothing was opened for them
        y = await b.step("k", [0.5] * I)  # a list of floats is a frame
        await b.aclose()
        return y

    assert np.array_equal(run(main()), reference(engine, [np.full(I, 0.5, np.float32)])[0])


def test_token_model_refused_id_fails_alone(rng):
    engine = le.Engine(make_model(rng, 5, (10,), vocab=20, head=20, head_act="LogSoftmax"))

    async def main():
        b = Batcher(engine)
        got = await asyncio.gather(b.step("a", 3), b.step("b", 20), b.step("c", np.int64(19)),
                                   return_exceptions=True)
        with pytest.raises(ValueError):
            b.step("d", 1.5)
        await b.aclose()
        return got

    a, b_, c = run(main())
    assert isinstance(b_, ValueError) and "token ids" in str(b_)
    assert np.array_equal(a, reference(engine, [3])[0]) and np.array_equal(c, reference(engine, [19])[0])


def test_backpressure(engine, rng):
    x = rand(rng, I)

    async def main():
        b = Batcher(engine, max_pending=3, max_streams=2)
        queued = [b.step("a", x) for _ in range(3)]  # the batch loop has not run yet: all queued
        with pytest.raises(Overloaded, match="max_pending"):
            b.step("a", x)
        b.step("b", x)
        with pytest.raises(Overloaded, match="max_streams"):
            b.step("c", x)
        with pytest.raises(Overloaded):
            await b.open("c")
        outs = await asyncio.gather(*queued)
        await b.step("a", x)  # answered frames free their places
        stats = b.stats()
        await b.aclose()
        return outs, stats

    outs, stats = run(main())
    assert all(np.array_equal(y, r) for y, r in zip(outs, reference(engine, [x] * 3)))
    assert stats["overloaded"] == 3 and stats["streams"] == 2


def test_eviction_then_exact_resumption(engine, rng):
    X = rand(rng, 6, I)
    evicted = {}

    async def main():
        b = Batcher(engine, idle_timeout_s=0.05, on_evict=evicted.__setitem__)
        first = [await b.step("k", x) for x in X[:3]]
        await until(lambda: "k" in evicted)
        assert len(b) == 0 and b.stats()["evicted"] == 1
        await b.open("k", state=evicted["k"])
        second = [await b.step("k", x) for x in X[3:]]
        await b.aclose()
        return first + second

    assert all(np.array_equal(y, r) for y, r in zip(run(main()), reference(engine, X)))


def test_async_on_evict_and_no_eviction_without_timeout(engine, rng):
    x = rand(rng, I)
    evicted = []

    async def on_evict(key, blob):
        await asyncio.sleep(0)
        evicted.append(key)

    async def main():
        keep = Batcher(engine, idle_timeout_s=None)
        drop = Batcher(engine, idle_timeout_s=0.05, on_evict=on_evict)
        await keep.step("k", x)
        await drop.step("k", x)
        await until(lambda: evicted)
        assert len(keep) == 1 and len(drop) == 0
        await keep.aclose()
        await drop.aclose()

    run(main())
    assert evicted == ["k"]


def test_close_waits_for_queued_frames_and_returns_snapshot(engine, rng):
    X = rand(rng, 5, I)

    async def main():
        b = Batcher(engine)
        await b.open("k")
        queued = [b.step("k", x) for x in X[:3]]
        blob = await b.close("k")
        assert all(f.done() for f in queued) and len(b) == 0
        with pytest.raises(KeyError):
            await b.close("k")
        fresh = await b.step("k", X[3])  # a closed key opens anew, at zero state
        await b.aclose()
        return blob, fresh

    blob, fresh = run(main())
    assert np.array_equal(fresh, reference(engine, X[3:4])[0])
    assert np.array_equal(engine.restore(blob).step(X[3]), reference(engine, X[:4])[3])


def test_open_from_state_and_refusals(engine, rng):
    X = rand(rng, 4, I)
    s = engine.open_stream()
    for x in X[:2]:
        s.step(x)
    h, c = s.state

    async def main():
        b = Batcher(engine)
        await b.open("blob", state=s.snapshot())
        await b.open("hc", state=(h, c))
        with pytest.raises(ValueError, match="already open"):
            await b.open("hc")
        with pytest.raises(ValueError):
            await b.open("bad", state=b"not a snapshot")
        outs = [await b.step(k, X[2]) for k in ("blob", "hc")]
        await b.aclose()
        return outs, len(b)

    outs, n = run(main())
    want = reference(engine, X[:3])[2]
    assert n == 2 and all(np.array_equal(y, want) for y in outs)


def test_cancelled_frame_is_withdrawn(engine, rng):
    X = rand(rng, 3, I)

    async def main():
        b = Batcher(engine)
        kept = b.step("k", X[0])
        b.step("k", X[1]).cancel()  # before its batch starts
        last = b.step("k", X[2])
        outs = [await kept, await last]
        await b.aclose()
        return outs

    assert all(np.array_equal(y, r) for y, r in zip(run(main()), reference(engine, X[[0, 2]])))


def test_aclose_finishes_queued_frames_then_refuses(engine, rng):
    X = rand(rng, 4, I)

    async def main():
        b = Batcher(engine)
        queued = [b.step(i, x) for i, x in enumerate(X)]
        await b.aclose()
        assert all(f.done() and f.exception() is None for f in queued)
        with pytest.raises(RuntimeError, match="closed"):
            b.step(0, X[0])
        await b.aclose()  # twice is fine

    run(main())


class MemoryStore:
    """The store protocol in one dict: load claims a key under a newer epoch, a write
    from any other epoch is refused (what RedisStore does inside Redis). Keeps the
    newest checkpoint only; tests of RedisStore cover the previous one."""

    def __init__(self):
        self.data, self.owner, self.epoch, self.calls = {}, {}, 0, []

    async def load(self, key, received=None):
        self.epoch += 1
        self.owner[key] = self.epoch
        seq, blob = self.data.get(key, (None, None))
        return self.epoch, seq, blob

    async def write_many(self, items, keep_behind=0):
        self.calls.append(len(items))
        done = []
        for key, epoch, seq, blob in items:
            done.append(self.owner.get(key) == epoch)
            if done[-1] and blob is None:
                del self.owner[key]
                self.data.pop(key, None)
            elif done[-1]:
                self.data[key] = (seq, blob)
        return done


def test_store_checkpoints_and_resumes_elsewhere(engine, rng):
    X = rand(rng, 7, I)
    store = MemoryStore()

    async def main():
        first = Batcher(engine, store=store, checkpoint_every=2)
        assert await first.resume_seq("k") is None
        outs = [await first.step("k", x, seq=n) for n, x in enumerate(X[:5])]
        await until(lambda: store.data.get("k", (None,))[0] == 3)  # written every 2 frames
        # another process takes the key over: it resumes from the checkpoint (seq 3),
        # and the first owner's writes are stale from now on
        second = Batcher(engine, store=store)
        assert await second.resume_seq("k") == 3
        outs += [await second.step("k", x, seq=n) for n, x in zip(range(4, 7), X[4:])]
        await first.release("k")  # refused by the store: second owns the key
        assert store.data["k"][0] == 3
        blob = await second.release("k")
        assert store.data["k"] == (6, blob)
        assert await second.resume_seq("k") == 6  # opened again, from that checkpoint
        await second.close("k")  # ends the stream: its key is deleted
        assert "k" not in store.data
        await first.aclose()
        await second.aclose()
        return outs

    outs = run(main())
    ref = reference(engine, X)
    assert all(np.array_equal(y, r) for y, r in zip(outs[:5] + outs[5:], ref[:5] + ref[4:]))


def test_bad_arguments(engine):
    for kwargs in ({"max_batch": 0}, {"max_pending": 1.5}, {"max_wait_ms": -1}, {"idle_timeout_s": 0},
                   {"checkpoint_every": 3}):
        with pytest.raises(ValueError):
            Batcher(engine, **kwargs)


def test_reopening_waits_for_the_last_checkpoint(engine, rng):
    X = rand(rng, 3, I)

    async def main():
        b = Batcher(engine, store=SlowStore())
        await b.step("k", X[0], seq=0)
        closing = asyncio.ensure_future(b.release("k"))
        await until(lambda: len(b) == 0)  # release() removed the stream; its checkpoint is on its way
        y = await b.step("k", X[1], seq=1)  # resumes from that checkpoint, not from nothing
        await closing
        await b.aclose()
        return y

    assert np.array_equal(run(main()), reference(engine, X[:2])[1])


def test_checkpoints_due_together_go_in_one_write(engine, rng):
    X = rand(rng, 16, 8, I)
    store = MemoryStore()

    async def main():
        b = Batcher(engine, store=store, checkpoint_every=4)

        async def client(i):
            return [await b.step(i, x, seq=n) for n, x in enumerate(X[i])]

        outs = await asyncio.gather(*[client(i) for i in range(16)])
        await b.aclose()
        return outs, b.stats()

    outs, stats = run(main())
    assert stats["checkpoints"] == 32 and sum(store.calls) <= 32  # a newer write replaces an unsent one
    assert max(store.calls) > 1 and len(store.calls) < 32  # several streams' checkpoints per write
    for i in range(16):
        seq, blob = store.data[i]
        assert seq == 7 and np.array_equal(engine.restore(blob).step(X[i, 0]),
                                           reference(engine, list(X[i]) + [X[i, 0]])[8])


class SlowStore(MemoryStore):
    async def write_many(self, items, keep_behind=0):
        await asyncio.sleep(0.2)  # a busy or distant store: frames come before writes land
        return await super().write_many(items, keep_behind)


def test_a_stream_evicted_while_its_checkpoint_is_on_its_way_resumes_from_it(engine, rng):
    X = rand(rng, 6, I)

    async def main():
        b = Batcher(engine, store=SlowStore(), checkpoint_every=5, idle_timeout_s=0.05)
        outs = [await b.step("k", x, seq=n) for n, x in enumerate(X[:5])]  # the checkpoint at seq 4 is queued
        await until(lambda: b.stats()["evicted"] == 1)  # evicted: nothing new to write, but that write is pending
        outs.append(await b.step("k", X[5], seq=5))  # reopens after the write lands, from it
        stats = b.stats()
        await b.aclose()
        return outs, stats

    outs, stats = run(main())
    assert stats["moved"] == 0 and all(np.array_equal(y, r) for y, r in zip(outs, reference(engine, X)))


def test_a_frame_past_the_checkpoint_it_resumed_from_is_moved(engine, rng):
    """Frames between the checkpoint and the frame are missing: the client must replay."""
    X = rand(rng, 8, I)
    store = MemoryStore()

    async def main():
        a = Batcher(engine, store=store, checkpoint_every=3)
        for n, x in enumerate(X[:5]):
            await a.step("k", x, seq=n)
        await until(lambda: store.data.get("k", (None,))[0] == 2)
        b = Batcher(engine, store=store)
        with pytest.raises(Moved, match="frames after 2"):
            await b.step("k", X[5], seq=5)  # as if frames 3 and 4 had been applied here
        ys = [await b.step("k", X[n], seq=n) for n in range(3, 8)]  # the replay, then on
        await a.aclose()
        await b.aclose()
        return ys

    assert all(np.array_equal(y, r) for y, r in zip(run(main()), reference(engine, X)[3:]))


def test_checkpoints_of_streams_in_step_are_spread_over_batches(engine, rng):
    """64 streams opened together reach their checkpoint in the same batch: 32 are written
    there, the others with their next frame, and they stay one frame apart after."""
    from lstm_engine.serving.batcher import CHECKPOINTS_PER_BATCH

    X = rand(rng, 64, I)
    store = MemoryStore()

    async def main():
        b = Batcher(engine, store=store, checkpoint_every=4)
        counts = []
        for n in range(9):  # lockstep: each round is one batch of 64 frames
            await asyncio.gather(*[b.step(i, X[i], seq=n) for i in range(64)])
            counts.append(b.stats()["checkpoints"])
        await until(lambda: sorted(seq for seq, _ in store.data.values()) == [7] * 32 + [8] * 32)
        await b.aclose()
        return counts

    assert CHECKPOINTS_PER_BATCH == 32
    assert run(main()) == [0, 0, 0, 32, 64, 64, 64, 96, 128]
