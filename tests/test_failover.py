"""Streams that survive their worker (issue 15): example services (examples/ws_service.py)
as real processes sharing a real redis-server. A worker is SIGKILLed after a checkpoint
and its stream resumes on the other with replay, every output equal to an uninterrupted
stream's bit for bit; a stale owner's writes are refused; closing with 1000 deletes the
stream's checkpoint, any other end writes one; a second connection of a stream id takes
it over. Recovery times are printed (pytest -s), never asserted."""
import asyncio
import importlib.util
import json
import signal
import time

import pytest

from helpers import rand
from lstm_engine.serving import RedisStore, wire
from workers import ROOT, WORKER_INPUTS, Workers

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")

I = WORKER_INPUTS
EVERY = 5  # the workers' --checkpoint-every: checkpoints after frames 4, 9, 14, ... (seqs from 0)


def example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workers(worker_model, redis_url, tmp_path_factory):
    w = Workers(worker_model, redis_url, tmp_path_factory.mktemp("logs"), "--checkpoint-every", str(EVERY))
    try:
        yield w
    finally:
        w.stop()


def uninterrupted(engine, X):
    """The answer messages an uninterrupted stream of X gives, by seq."""
    s = engine.open_stream()
    return [wire.encode(seq, s.step(x)) for seq, x in enumerate(X)]


def run_with_store(redis_url, session):
    """session(store), with a RedisStore of its own closed afterwards; a hang fails, never
    blocks the suite."""
    async def main():
        store = RedisStore(redis_url)
        try:
            return await session(store)
        finally:
            await store.aclose()

    return asyncio.run(asyncio.wait_for(main(), 60))


def connect(url):
    from websockets.asyncio.client import connect

    return connect(url, compression=None)


async def until(probe, what, timeout=10.0):
    """Await probe() until it is true (a store write or a worker's reaction is in flight)."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def hello(ws):
    return json.loads(await ws.recv())


async def steps(ws, X, seqs):
    """Send the frames of `seqs` (pipelined), then their answers in order."""
    for seq in seqs:
        await ws.send(wire.encode(seq, X[seq]))
    return [await ws.recv() for _ in seqs]


async def stored_seq(store, sid):
    ckpt = await store.checkpoint(sid)
    return None if ckpt is None else ckpt[1]


def test_close_1000_deletes_the_checkpoint(workers, worker_engine, redis_url, rng):
    workers.start("B")
    X = rand(rng, 6, I)
    sid = "failover-close"

    async def session(store):
        async with connect(workers.url("B", sid)) as ws:
            assert await hello(ws) == {"worker": "B", "stream": sid, "resume_seq": None}
            assert await steps(ws, X, range(6)) == uninterrupted(worker_engine, X)
            await until(lambda: _is(store, sid, 4), "the checkpoint of frame 4")
        # leaving the block closed the connection with 1000: the stream has ended
        await until(lambda: _none(store, sid), "the key deleted")

    run_with_store(redis_url, session)


def test_abnormal_disconnect_releases_the_stream(workers, worker_engine, redis_url, rng):
    workers.start("A", "B")
    X = rand(rng, 9, I)
    want = uninterrupted(worker_engine, X)
    sid = "failover-abort"

    async def session(store):
        async with connect(workers.url("A", sid)) as ws:
            await hello(ws)
            assert await steps(ws, X, range(7)) == want[:7]
            ws.transport.abort()  # no close frame: the worker sees the connection lost
        await until(lambda: _is(store, sid, 6), "the released checkpoint of the last frame, 6")
        async with connect(workers.url("B", sid, received=6)) as ws:
            assert await hello(ws) == {"worker": "B", "stream": sid, "resume_seq": 6}
            assert await steps(ws, X, [7, 8]) == want[7:]

    run_with_store(redis_url, session)


def test_take_over_on_the_same_worker(workers, worker_engine, redis_url, rng):
    workers.start("B")
    X = rand(rng, 5, I)
    want = uninterrupted(worker_engine, X)
    sid = "failover-take-over"

    async def session(store):
        async with connect(workers.url("B", sid)) as old:
            await hello(old)
            assert await steps(old, X, range(3)) == want[:3]
            async with connect(workers.url("B", sid, received=2)) as new:
                # the old connection is closed (4000) and releases the stream first
                assert await hello(new) == {"worker": "B", "stream": sid, "resume_seq": 2}
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await old.recv()
                assert closed.value.rcvd.code == 4000
                assert await steps(new, X, [3, 4]) == want[3:]
        await until(lambda: _none(store, sid), "the key deleted")

    run_with_store(redis_url, session)


def test_a_stale_owner_is_refused(workers, worker_engine, redis_url, rng):
    """B claims a stream A still serves: A's release is refused (the checkpoint stays B's),
    and a stale connection that goes on stepping is closed with 4001 (Moved)."""
    workers.start("A", "B")
    X = rand(rng, 30, I)
    want = uninterrupted(worker_engine, X)

    async def claim_behind(sid, store):
        """A steps frames 0-7 (checkpoint of frame 4), then B claims the stream."""
        a = await connect(workers.url("A", sid))
        await hello(a)
        assert await steps(a, X, range(8)) == want[:8]
        await until(lambda: _is(store, sid, 4), "A's checkpoint of frame 4")
        b = await connect(workers.url("B", sid, received=7))
        assert await hello(b) == {"worker": "B", "stream": sid, "resume_seq": 4}
        return a, b, await store.checkpoint(sid)

    async def session(store):
        moved = workers.stats("A")["moved"]
        a, b, claimed = await claim_behind("failover-stale-release", store)
        assert await steps(a, X, [8]) == want[8:9]  # A does not know yet
        await a.close(1001)  # not the end of the stream: A releases it, a stale write
        await until(lambda: _stats_moved(workers, moved + 1), "A's release refused")
        assert await store.checkpoint("failover-stale-release") == claimed
        assert await steps(b, X, range(5, 10)) == want[5:10]  # replayed from B's resume_seq
        await b.close()

        a, b, claimed = await claim_behind("failover-stale-stepping", store)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for seq in range(8, 30):  # A's next checkpoint (frame 9) is refused, then Moved
                assert await steps(a, X, [seq]) == want[seq:seq + 1]
        assert closed.value.rcvd.code == 4001 and seq >= 9
        assert await store.checkpoint("failover-stale-stepping") == claimed
        assert await steps(b, X, range(5, 12)) == want[5:12]
        await b.close()

    run_with_store(redis_url, session)


def test_killed_worker_resumes_on_another_exactly(workers, worker_engine, redis_url, rng):
    workers.start("A", "B")
    X = rand(rng, 40, I)
    want = uninterrupted(worker_engine, X)
    sid = "failover-kill"

    async def session(store):
        async with connect(workers.url("A", sid)) as a:
            assert await hello(a) == {"worker": "A", "stream": sid, "resume_seq": None}
            assert await steps(a, X, range(13)) == want[:13]
            await until(lambda: _is(store, sid, 9), "A's checkpoint of frame 9")
            workers.kill("A")
            with pytest.raises(websockets.ConnectionClosed):
                await a.recv()
        t0 = time.perf_counter()
        async with connect(workers.url("B", sid, received=12)) as b:
            # the newest checkpoint at or before the client's latest output
            assert await hello(b) == {"worker": "B", "stream": sid, "resume_seq": 9}
            assert await steps(b, X, range(10, 13)) == want[10:13]  # the replay, as before
            assert await steps(b, X, [13]) == want[13:14]
            recovery = time.perf_counter() - t0
            assert await steps(b, X, range(14, 40)) == want[14:]
        await until(lambda: _none(store, sid), "the key deleted")
        return recovery

    recovery = run_with_store(redis_url, session)
    print(f"\nrecovery after SIGKILL (reconnect, hello, 3 frames replayed, first new output): {recovery * 1e3:.1f} ms")


def test_a_worker_shutting_down_hands_its_streams_over(workers, worker_engine, redis_url, rng):
    workers.start("A", "B")
    X = rand(rng, 9, I)
    want = uninterrupted(worker_engine, X)
    sid = "failover-shutdown"

    async def session(store):
        async with connect(workers.url("A", sid)) as a:
            await hello(a)
            assert await steps(a, X, range(7)) == want[:7]
            await asyncio.to_thread(workers.kill, "A", signal.SIGTERM)  # returns once A has exited
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await a.recv()
            assert closed.value.rcvd.code == 1012  # service restart
        assert await stored_seq(store, sid) == 6  # released before A exited
        async with connect(workers.url("B", sid, received=6)) as b:
            assert await hello(b) == {"worker": "B", "stream": sid, "resume_seq": 6}
            assert await steps(b, X, [7, 8]) == want[7:]

    run_with_store(redis_url, session)


def test_example_client_rides_through_a_kill(workers, worker_engine, redis_url, rng):
    """examples/ws_client.py streams on; A is killed at whatever frame it is at."""
    workers.start("A", "B")
    ws_client = example("ws_client")
    X = rand(rng, 400, I)
    want = uninterrupted(worker_engine, X)
    sid = "failover-client"
    got = []

    async def session(store):
        client = ws_client.ResumingClient([workers.url("A"), workers.url("B")], sid, keep=64,
                                          on_output=lambda seq, y, replayed: got.append((seq, wire.encode(seq, y))))
        task = asyncio.ensure_future(client.run(X, period_s=0.002))
        await until(lambda: _at_least(store, sid, 100), "A's checkpoint of frame 100 or later", timeout=30)
        workers.kill("A")
        summary = await task
        await until(lambda: _none(store, sid), "the key deleted")
        return summary

    s = run_with_store(redis_url, session)
    print(f"\nexample client: {s}")
    assert s["frames"] == s["outputs"] == len(X) and s["workers"] == ["A", "B"]
    assert s["recoveries"] == 1 and s["failed_recoveries"] == s["lost"] == s["mismatches"] == s["refused"] == 0
    (received, resume), = s["resumes"]
    assert resume <= received and (resume + 1) % EVERY == 0
    assert len(got) == len(X) + s["replayed"] and all(y == want[seq] for seq, y in got)


async def _is(store, sid, seq):
    return await stored_seq(store, sid) == seq


async def _at_least(store, sid, seq):
    return (await stored_seq(store, sid) or -1) >= seq


async def _none(store, sid):
    return await store.checkpoint(sid) is None


async def _stats_moved(workers, n):
    return (await asyncio.to_thread(workers.stats, "A"))["moved"] >= n
