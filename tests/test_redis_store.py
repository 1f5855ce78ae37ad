"""RedisStore against a real redis-server, alone and under Batchers: claims, ownership
(compare-and-set inside Redis), the two checkpoints, deletion, expiry, a restarted
server; and two Batchers handing a stream over through it. Behaviour, no timings."""
import asyncio
import itertools

import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand
from lstm_engine.serving import Batcher, Moved, RedisStore
from redis_server import free_port, redis_server

I = 6
_prefixes = itertools.count()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def store_of(redis_url):
    """store_of(**options): a RedisStore with a prefix of its own on the session's server."""
    prefix = f"t{next(_prefixes)}:"

    def make(**options):
        return RedisStore(redis_url, prefix=prefix, **options)

    return make


@pytest.fixture(scope="module")
def engine():
    return le.Engine(make_model(np.random.default_rng(15), I, (16,), head=3))


def reference(engine, frames):
    s = engine.open_stream()
    return [s.step(x) for x in frames]


def test_claims_own_a_key_until_the_next_claim(store_of):
    async def main():
        s = store_of()
        e1, seq, blob = await s.load("a")
        assert (seq, blob) == (None, None)  # nothing stored yet
        assert await s.write_many([("a", e1, 3, b"three"), ("a", e1, 6, b"six")]) == [True, True]
        e2, seq, blob = await s.load("a")
        assert e2 != e1 and (seq, blob) == (6, b"six")
        assert await s.save("a", e1, 7, b"stale") is False  # the first owner is stale now
        assert await s.delete("a", e1) is False
        assert await s.checkpoint("a") == (e2, 6, b"six")
        e3, *_ = await s.load("b")
        assert int(e3.split(":")[0]) > int(e2.split(":")[0])  # one counter for every key
        await s.aclose()

    run(main())


def test_received_picks_the_checkpoint_the_client_has_outputs_for(store_of):
    async def main():
        s = store_of()
        e, *_ = await s.load("k")
        for seq in (10, 20, 30):  # two are kept: 20 and 30
            assert await s.save("k", e, seq, b"at%d" % seq)
        got = [(await s.load("k", received=r))[1:] for r in (None, 35, 30, 29, 20, 19)]
        await s.aclose()
        return got

    assert run(main()) == [(30, b"at30"), (30, b"at30"), (30, b"at30"), (20, b"at20"), (20, b"at20"),
                           (30, b"at30")]  # nothing at or before 19: the newest, and the client knows


def test_delete_ends_a_key_for_every_owner(store_of):
    async def main():
        s = store_of()
        e1, *_ = await s.load("k")
        await s.save("k", e1, 1, b"one")
        e2, *_ = await s.load("k")
        assert await s.delete("k", e2) is True
        assert await s.checkpoint("k") is None
        assert await s.save("k", e1, 2, b"stale") is False  # no owner: nothing is written back
        assert await s.save("k", e2, 2, b"late") is False  # the deleting owner's own late write too
        e3, seq, blob = await s.load("k")  # a new stream of that key, at zero state
        assert e3 not in (e1, e2) and (seq, blob) == (None, None)
        await s.aclose()

    run(main())


def test_keys_of_different_types_are_kept_apart(store_of):
    async def main():
        s = store_of()
        for k in ("1", b"1", 1):
            e, *_ = await s.load(k)
            await s.save(k, e, 0, repr(k).encode())
        got = [(await s.checkpoint(k))[2] for k in ("1", b"1", 1)]
        with pytest.raises(TypeError):
            s.redis_key(1.5)
        await s.aclose()
        return got

    assert run(main()) == [b"'1'", b"b'1'", b"1"]


def test_sequence_numbers_of_64_bits_round_trip(store_of):
    async def main():
        s = store_of()
        e, *_ = await s.load("k")
        big = 2 ** 64 - 1
        await s.save("k", e, big - 1, b"a")
        await s.save("k", e, big, b"b")
        got = (await s.load("k", received=big - 1))[1:]
        await s.aclose()
        return got

    assert run(main()) == (2 ** 64 - 2, b"a")  # Lua's doubles would have rounded both to 2^64


def test_ttl_is_set_by_claims_and_writes(store_of):
    async def main():
        s = store_of(ttl_s=100)
        e, *_ = await s.load("k")
        after_claim = await s._r.pttl(s.redis_key("k"))
        await s._r.persist(s.redis_key("k"))
        await s.save("k", e, 1, b"x")
        after_save = await s._r.pttl(s.redis_key("k"))
        forever = store_of()
        await forever.load("f")
        never = await forever._r.pttl(forever.redis_key("f"))
        await s.aclose()
        await forever.aclose()
        return after_claim, after_save, never

    after_claim, after_save, never = run(main())
    assert 0 < after_claim <= 100_000 and 0 < after_save <= 100_000 and never == -1
    for bad in (0, -1, float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError):
            RedisStore(ttl_s=bad)


@pytest.mark.parametrize("persistent", [True, False])
def test_a_restarted_server(engine, tmp_path, persistent):
    """The server goes away with a checkpoint due. Frames go on; the Batcher retries the
    write and loads its scripts again. A server that kept its data (append-only file)
    gets the checkpoint; one that comes back empty has forgotten the claim, so the write
    is refused and the Batcher stops stepping a stream it can no longer prove it owns."""
    port = free_port()
    X = rand(np.random.default_rng(1), 6, I)
    data = tmp_path if persistent else None

    async def main():
        with redis_server(port, data) as url:
            b = Batcher(engine, store=RedisStore(url), checkpoint_every=2)
            for n, x in enumerate(X[:3]):
                await b.step("k", x, seq=n)
            while b.stats()["store_writes"] < 1:  # the checkpoint at seq 1
                await asyncio.sleep(0.01)
        y3 = await b.step("k", X[3], seq=3)  # the checkpoint at seq 3 is due: the server is gone
        await asyncio.sleep(0.1)
        assert b.stats()["store_errors"] >= 1
        with redis_server(port, data) as url:
            while b._writer is not None:  # retrying
                await asyncio.sleep(0.02)
            reader = RedisStore(url)
            got = await reader.checkpoint("k")
            if persistent:
                assert got[1] == 3 and b.stats()["moved"] == 0
                y4 = await b.step("k", X[4], seq=4)
            else:
                assert got is None and b.stats()["moved"] == 1
                with pytest.raises(Moved):
                    b.step("k", X[4], seq=4)
                y4 = None
            await b.aclose()
            await reader.aclose()
        return y3, y4

    y3, y4 = run(main())
    ref = reference(engine, X[:5])
    assert np.array_equal(y3, ref[3]) and (y4 is None or np.array_equal(y4, ref[4]))


def test_two_batchers_hand_a_stream_over(engine, store_of):
    X = rand(np.random.default_rng(2), 12, I)

    async def main():
        a = Batcher(engine, store=store_of(), checkpoint_every=3)
        b = Batcher(engine, store=store_of())
        assert await a.resume_seq("k") is None
        outs = {n: await a.step("k", X[n], seq=n) for n in range(7)}
        await a.step("other", X[0], seq=0)  # a second stream in a's batches
        while a.stats()["store_writes"] < 2:  # checkpoints at seq 2 and 5
            await asyncio.sleep(0.01)
        resume = await b.resume_seq("k", received=6)
        assert resume == 5
        with pytest.raises(ValueError, match="not after"):  # a replay from too early
            await b.step("k", X[5], seq=5)
        for n in range(resume + 1, 12):
            y = await b.step("k", X[n], seq=n)
            assert n not in outs or np.array_equal(outs[n], y)  # replayed: the same bits
            outs[n] = y
        await a.step("k", X[7], seq=7)  # the old owner does not know yet: its next checkpoint
        await a.step("k", X[8], seq=8)  # (after seq 8) is refused
        while not a.stats()["moved"]:
            await asyncio.sleep(0.01)
        with pytest.raises(Moved):
            a.step("k", X[9], seq=9)
        await a.aclose()
        await b.close("k")  # the stream ends: deleted
        assert await store_of().checkpoint("k") is None
        await b.aclose()
        return outs

    outs = run(main())
    ref = reference(engine, X)
    assert all(np.array_equal(outs[n], ref[n]) for n in range(12))


def test_aclose_checkpoints_every_changed_stream(engine, store_of):
    X = rand(np.random.default_rng(3), 5, 3, I)

    async def main():
        b = Batcher(engine, store=store_of(), checkpoint_every=100)
        for i in range(5):
            for n in range(i % 3 + 1):
                await b.step(i, X[i, n], seq=n)
        await b.aclose()
        reader = store_of()
        got = [await reader.checkpoint(i) for i in range(5)]
        await reader.aclose()
        return got

    for i, (_, seq, blob) in enumerate(run(main())):
        n = i % 3 + 1
        assert seq == n - 1
        assert np.array_equal(engine.restore(blob).step(X[i, 0]),
                              reference(engine, list(X[i, :n]) + [X[i, 0]])[n])


# ---- regressions found by an adversarial review -----------------------------------------
def test_a_cancelled_release_still_frees_the_stream(engine, store_of):
    X = rand(np.random.default_rng(4), 4, I)

    async def main():
        b = Batcher(engine, store=store_of(), max_wait_ms=50)
        await b.resume_seq("k")
        frames = [b.step("k", X[n], seq=n) for n in range(3)]
        leaving = asyncio.ensure_future(b.release("k"))
        await asyncio.sleep(0)  # waiting for the queued frames
        leaving.cancel()  # its caller (a connection's handler) is cancelled
        await asyncio.gather(leaving, *frames, return_exceptions=True)
        await until(lambda: len(b) == 0)  # the release went on: the key is free
        start = await b.resume_seq("k")
        y = await b.step("k", X[3], seq=3)
        await b.aclose()
        return start, y

    start, y = run(main())
    assert start == 2 and np.array_equal(y, reference(engine, X)[3])


async def until(condition, seconds=10.0):
    end = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_bad_seqs_are_refused_at_the_call_and_the_others_go_on(engine):
    X = rand(np.random.default_rng(5), 3, I)

    async def main():
        b = Batcher(engine)
        for bad in ("7", 1.0, -1, 2 ** 64, True):
            with pytest.raises(ValueError, match="seq="):
                b.step("a", X[0], seq=bad)
        ys = [await b.step("a", X[0], seq=np.uint64(2 ** 64 - 2)), await b.step("b", X[1], seq=0)]
        with pytest.raises(ValueError, match="needs a seq"):  # its checkpoints would be mislabelled
            await b.step("a", X[1])
        ys.append(await b.step("a", X[2], seq=2 ** 64 - 1))
        await b.aclose()
        return ys

    ys = run(main())
    assert np.array_equal(ys[0], reference(engine, X[:1])[0]) and np.array_equal(ys[2], reference(engine, X[[0, 2]])[1])


def test_a_failed_claim_is_reported_to_its_callers_only(engine):
    X = rand(np.random.default_rng(6), 1, I)
    unhandled = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unhandled.append(ctx["message"]))
        b = Batcher(engine, store=RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1))  # nobody there
        import redis.exceptions

        with pytest.raises(redis.exceptions.ConnectionError):
            await b.step("k", X[0], seq=0)
        await b.aclose()
        await asyncio.sleep(0)

    run(main())
    import gc
    gc.collect()  # an unretrieved exception is reported when its task is collected
    assert unhandled == []


def test_epochs_stay_unique_when_redis_comes_back_empty(engine):
    """A stale owner's epoch must not match a later claim's, even when the epoch counter
    starts over (a restart without persistence, a failover to a lagging replica)."""
    port = free_port()

    async def main():
        with redis_server(port) as url:
            a = RedisStore(url)
            ea, *_ = await a.load("k")
        with redis_server(port) as url:  # empty
            a = RedisStore(url)
            eb, *_ = await RedisStore(url).load("k")
            stale = await a.save("k", ea, 8, b"stale")
            got = await a.checkpoint("k")
        return ea, eb, stale, got

    ea, eb, stale, got = run(main())
    assert ea != eb and stale is False and got == (eb, None, None)


def test_a_repeated_write_changes_nothing(store_of):
    async def main():
        s = store_of()
        e, *_ = await s.load("k")
        await s.save("k", e, 5, b"five")
        await s.save("k", e, 10, b"ten")
        await s.save("k", e, 10, b"ten")  # a retry after its reply was lost
        got = (await s.load("k", received=7))[1:]
        await s.aclose()
        return got

    assert run(main()) == (5, b"five")


def test_the_older_checkpoint_stays_behind_what_was_answered(store_of):
    """A release right after a periodic checkpoint (answers in flight), and a new owner
    that resumed from the older checkpoint releasing below the newest: neither pushes out
    the checkpoint the client can resume from."""
    async def main():
        s = store_of()
        e, *_ = await s.load("k")
        for seq in (9, 19, 29):
            await s.write_many([("k", e, seq, b"%d" % seq)], keep_behind=10)
        await s.write_many([("k", e, 32, b"32")], keep_behind=10)  # the release: 29 is too recent to keep
        after_release = (await s.load("k", received=28))[1:]
        e2, *_ = await s.load("k", received=28)
        await s.write_many([("k", e2, 25, b"25")], keep_behind=10)  # resumed from 19, released at 25
        behind = (await s.load("k", received=22))[1:]
        first = store_of()
        e3, *_ = await first.load("f")
        await first.save("f", e3, 24, b"24")  # a stream's first checkpoint, ahead of the client
        zero = (await first.load("f", received=22))[1:]
        await s.aclose()
        await first.aclose()
        return after_release, behind, zero

    after_release, behind, zero = run(main())
    assert after_release == (19, b"19")  # not 29: the client has outputs up to 28 only
    assert behind == (19, b"19")  # 25 replaced 32 as the newest; 19 is still there
    assert zero == (None, None)  # zero state: the client replays from its first frame


def test_open_with_a_state_starts_a_new_life_of_the_key(engine, store_of):
    X = rand(np.random.default_rng(7), 12, I)

    async def main():
        a = Batcher(engine, store=store_of(), checkpoint_every=5)
        for n in range(11):
            await a.step("k", X[n], seq=n)
        await a.aclose()
        b = Batcher(engine, store=store_of())
        origin = engine.open_stream().snapshot()
        await b.open("k", state=origin)
        start = await b.resume_seq("k")
        y = await b.step("k", X[11], seq=1)  # its own numbering
        while b._writer is not None:
            await asyncio.sleep(0.01)
        stored = await store_of().checkpoint("k")
        await b.aclose()
        return start, y, stored, origin

    start, y, stored, origin = run(main())
    assert start is None and np.array_equal(y, reference(engine, X[11:])[0]) and stored[1:] == (None, origin)


def test_a_hung_server_fails_calls_instead_of_hanging_them(engine, monkeypatch):
    import os
    import signal

    from lstm_engine.serving import batcher

    monkeypatch.setattr(batcher, "STORE_PATIENCE_S", 1.0)
    X = rand(np.random.default_rng(8), 1, I)

    async def main():
        with redis_server() as url:
            b = Batcher(engine, store=RedisStore(url, timeout_s=0.3), checkpoint_every=1)
            await b.step("k", X[0], seq=0)
            pid = int((await b.store._r.info("server"))["process_id"])
            os.kill(pid, signal.SIGSTOP)  # the server stops answering, its sockets open
            try:
                blob = await b.release("k")  # gives up on the store, still returns the snapshot
                await b.aclose()
            finally:
                os.kill(pid, signal.SIGCONT)
        return blob, b.stats()["store_errors"]

    blob, errors = run(main())
    assert errors >= 1 and np.array_equal(engine.restore(blob).step(X[0]), reference(engine, [X[0], X[0]])[1])
