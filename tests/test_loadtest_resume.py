"""`lstm-engine loadtest --resume` against two real workers sharing a real Redis: one is
killed (SIGKILL) mid-run and its streams resume on the other, every output equal to a
local reference stream's. The workers are a small service written here to the resume
protocol (spec of issue 15: hello, resume_seq, close code 1000 ends a stream), run as
this file: `python tests/test_loadtest_resume.py PORT REDIS_URL PREFIX CHECKPOINT_EVERY`.
Behaviour only: how fast a stream recovers is measured, not asserted."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I, STREAMS, PERIOD_MS, SECONDS = 5, 4, 20, 2.0
FRAMES = round(SECONDS * 1000 / PERIOD_MS)
KILL_AT = 30  # the worker dies when its stream 0 has this output: past three checkpoints of 8 frames


def model():
    return make_model(np.random.default_rng(15), I, (24,), head=4)


def serve(port, redis_url, prefix, checkpoint_every):
    """One worker: a Batcher over a RedisStore behind a FastAPI WebSocket (uvicorn)."""
    import itertools

    import uvicorn
    from fastapi import FastAPI, WebSocket

    from lstm_engine.serving import Batcher, Moved, RedisStore, wire

    worker = f"worker:{port}"
    batcher = Batcher(le.Engine(model()), store=RedisStore(redis_url, prefix=prefix),
                      checkpoint_every=checkpoint_every)
    widths = [(b"x-input-size", str(I).encode()), (b"x-output-size", b"4")]
    anonymous = itertools.count()
    app = FastAPI()

    @app.websocket("/stream")
    async def stream(ws: WebSocket):
        name = ws.query_params.get("id")
        await ws.accept(headers=widths)
        resume = None
        if name is None:
            key = f"anonymous:{worker}:{next(anonymous)}"
        else:
            key, received = name, ws.query_params.get("received")
            resume = await batcher.resume_seq(key, None if received is None else int(received))
        await ws.send_text(json.dumps({"worker": worker, "stream": name, "resume_seq": resume}))
        code = None
        try:
            while (msg := await ws.receive())["type"] != "websocket.disconnect":
                seq, x = wire.decode(msg["bytes"])
                try:
                    y = await batcher.step(key, x, seq=seq)
                except ValueError as e:
                    await ws.send_text(json.dumps({"seq": seq, "error": str(e)}))
                    continue
                except Moved:
                    await ws.close(4001)
                    return
                await ws.send_bytes(wire.encode(seq, y))
            code = msg.get("code")
        finally:
            try:
                await (batcher.close(key) if code == 1000 or name is None else batcher.release(key))
            except KeyError:  # an anonymous stream that never sent a frame
                pass

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", ws="websockets-sansio")


@pytest.fixture(scope="module")
def engine():
    """The reference; compiling its kernels here puts them in the cache the workers load."""
    e = le.Engine(model())
    e.step_many([e.open_stream()], np.zeros((1, I), np.float32))
    return e


@pytest.fixture
def workers(engine, redis_url, request):
    """start(checkpoint_every) -> two worker processes on free ports, sharing one key
    prefix in Redis; (processes, their URLs, the prefix). Killed afterwards."""
    pytest.importorskip("fastapi")
    pytest.importorskip("websockets")  # uvicorn's WebSocket protocol
    pytest.importorskip("uvicorn")
    procs = []
    prefix = f"lt-{request.node.name}:"

    def start(checkpoint_every):
        ports = []
        for _ in range(2):
            with socket.socket() as s:  # a free port: bound and released, then given to the worker
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
        for port in ports:
            procs.append(subprocess.Popen([sys.executable, __file__, str(port), redis_url, prefix,
                                           str(checkpoint_every)], cwd=ROOT, env=env))
        deadline = time.monotonic() + 120  # a cold kernel cache compiles for a while
        for proc, port in zip(procs, ports):
            while True:
                assert proc.poll() is None, f"worker exited with {proc.returncode}"
                assert time.monotonic() < deadline, "worker did not listen within 120 s"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        return procs, [f"ws://127.0.0.1:{port}/stream" for port in ports], prefix

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def stored_keys(redis_url, prefix):
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() for k in r.keys(prefix + "*") if k != (prefix + "epoch").encode())
    finally:
        r.close()


def run_killing(procs, urls, keep, outputs):
    """A resumable run that kills worker 0 once its stream 0 answered KILL_AT."""
    from lstm_engine.serving import loadtest, wire

    def on_answer(i, data):
        seq, y = wire.decode(data)
        outputs[i][seq] = y.copy()
        if i == 0 and seq >= KILL_AT and procs[0].poll() is None:
            procs[0].kill()

    return asyncio.run(loadtest.run_websocket(urls, STREAMS, PERIOD_MS, SECONDS, resume=True, keep=keep,
                                              on_answer=on_answer))


def test_streams_of_a_killed_worker_resume_on_the_other(workers, engine, redis_url):
    from lstm_engine.serving.loadtest import Inputs

    procs, urls, prefix = workers(checkpoint_every=8)
    outputs = {i: {} for i in range(STREAMS)}
    r = run_killing(procs, urls, 64, outputs)
    assert procs[0].poll() is not None
    on_killed = len(range(0, STREAMS, 2))  # round robin: streams 0 and 2 were on worker 0
    assert r["recoveries"] == on_killed and r["failed_recoveries"] == 0
    assert r["lost"] == 0 and r["replay_mismatches"] == 0
    assert r["replayed"] >= 1  # stream 0 resumed from a checkpoint before its latest output, which it compared
    assert r["sent"] == r["answered"] == STREAMS * FRAMES and r["refused"] == 0 and r["unexpected"] == 0
    inputs = Inputs(I)
    for i in range(STREAMS):
        s = engine.open_stream()
        assert sorted(outputs[i]) == list(range(FRAMES))
        assert all(np.array_equal(outputs[i][k], s.step(inputs.values(i, k))) for k in range(FRAMES)), i
    assert stored_keys(redis_url, prefix) == []  # every stream ended with close code 1000


def test_a_replay_reaching_back_past_the_kept_frames_fails(workers):
    procs, urls, _ = workers(checkpoint_every=0)  # no checkpoints: a resume starts from frame 0
    outputs = {i: {} for i in range(STREAMS)}
    r = run_killing(procs, urls, 8, outputs)
    assert r["failed_recoveries"] == 2 and r["recoveries"] == 0 and r["lost"] == 0
    assert all(len(outputs[i]) < FRAMES for i in (0, 2))  # ended at the failure
    assert all(len(outputs[i]) == FRAMES for i in (1, 3))  # the streams on the other worker went on


def test_cli_runs_resumable_and_plain_streams_over_two_workers(workers, redis_url, tmp_path, capsys):
    from lstm_engine.cli import main

    _, urls, prefix = workers(checkpoint_every=8)
    for extra in ([], ["--resume", "--keep", "40"]):
        out = tmp_path / "load.json"
        assert main(["loadtest", *urls, "--streams", "4", "--period-ms", "20", "--seconds", "0.5",
                     "--json", str(out), *extra]) == 0
        r = json.loads(out.read_text())
        assert r["answered"] == r["sent"] == 4 * 25
        assert r["refused"] == 0 and r["unexpected"] == 0  # the hellos are not refusals
        assert ("recoveries" in r) == bool(extra)
        if extra:
            assert r["keep"] == 40 and r["recoveries"] == r["failed_recoveries"] == r["replayed"] == 0
            assert "resumed 0" in capsys.readouterr().out
    assert stored_keys(redis_url, prefix) == []


if __name__ == "__main__":
    port, url, key_prefix, every = sys.argv[1:]
    serve(int(port), url, key_prefix, int(every))
