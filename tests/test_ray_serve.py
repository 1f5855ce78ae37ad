"""The example service on Ray Serve (examples/ray_service.py): two replicas on a local Ray
instance, reached through Serve's proxy, checkpointing to a real redis-server. A stream's
outputs equal a local Stream's bit for bit; when the replica holding it is killed, the
stream resumes on the other one with replay, and Serve restarts the dead replica; a
Serve shutdown hands the open streams over.

    pytest -m ray tests/test_ray_serve.py        # needs ray[serve]; skipped without it
"""
import asyncio
import importlib
import json
import os
import pathlib
import time

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine.bench import default_model
from lstm_engine.serving import RedisStore, wire
from redis_server import free_port


def _needs(module):
    # CI installs ray[serve] (.ci/run): there a missing one fails instead of skipping
    return importlib.import_module(module) if os.environ.get("CI") else pytest.importorskip(module)


ray = _needs("ray")
serve = _needs("ray.serve")
websockets = _needs("websockets")

pytestmark = pytest.mark.ray

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"
H = 16
CHECKPOINT_EVERY = 10
PREFIX = "test-ray-serve:"
DEADLINE_S = 60  # for Ray to notice a death, restart a replica or drop a key: liveness, not speed


@pytest.fixture(scope="module")
def service(redis_url):
    """ws://127.0.0.1:<free port>/stream of the deployment (2 replicas) on a local Ray
    instance of 2 CPUs, stopped afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        # the replicas unpickle ray_service's class, which imports ws_service: Ray's
        # workers inherit the environment of the instance ray.init starts here
        mp.syspath_prepend(str(EXAMPLES))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))
        import ray_service

        ray.init(num_cpus=2, include_dashboard=False)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(ray_service.build_app({"redis_url": redis_url, "hidden": H,
                                             "checkpoint_every": CHECKPOINT_EVERY, "prefix": PREFIX}))
            yield f"ws://127.0.0.1:{port}/stream"
        finally:
            serve.shutdown()
            ray.shutdown()


def reference(X):
    """Outputs and snapshots of an uninterrupted local Stream of the replicas' model."""
    stream = le.Engine(default_model(H)).open_stream()
    outs, snaps = [], []
    for x in X:
        outs.append(np.array(stream.step(x), np.float32))
        snaps.append(stream.snapshot())
    return outs, snaps


async def connect(url):
    """A connection and its hello; retried while Serve routes to a replica that just died."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            ws = await websockets.connect(url, compression=None, open_timeout=10)
            return ws, json.loads(await ws.recv())
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def step(ws, seq, x):
    await ws.send(wire.encode(seq, x))
    got_seq, y = wire.decode(await ws.recv())
    assert got_seq == seq
    return y


async def until(predicate):
    deadline = time.monotonic() + DEADLINE_S
    while not await predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.1)


def test_stream_survives_its_replica(service, redis_url, rng):
    X = rng.standard_normal((60, H)).astype(np.float32)
    want, _ = reference(X)
    received = 45

    async def run():
        ws, hello = await connect(f"{service}?id=survivor")
        assert ws.response.headers["x-input-size"] == ws.response.headers["x-output-size"] == str(H)
        assert hello["stream"] == "survivor" and hello["resume_seq"] is None
        killed = hello["worker"]  # the replica's id, which is also its actor's name
        got = {}
        for seq in range(1, received + 1):
            got[seq] = await step(ws, seq, X[seq - 1])
            assert np.array_equal(got[seq], want[seq - 1]), seq  # bit for bit

        ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), DEADLINE_S)  # the proxy drops the connection

        ws, hello = await connect(f"{service}?id=survivor&received={received}")
        assert hello["worker"] != killed and hello["stream"] == "survivor"
        resume = hello["resume_seq"]
        # checkpoints follow every 10th frame, and the one of frame 40 may not have been
        # written before the kill: the client replays 5 or 15 frames
        assert resume in (30, 40)
        for seq in range(resume + 1, 61):  # replay, then new frames
            y = await step(ws, seq, X[seq - 1])
            assert np.array_equal(y, want[seq - 1]), seq
            if seq in got:
                assert np.array_equal(y, got[seq]), seq
        await ws.close(1000)  # ends the stream: its key is deleted

        store = RedisStore(redis_url, prefix=PREFIX)
        try:
            await until(lambda: _gone(store, "survivor"))
        finally:
            await store.aclose()

        async def restarted():  # Serve starts a new replica (a new id) from the constructor
            replicas = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("SERVE_REPLICA::")}
            states = serve.status().applications["default"].deployments["StreamService"].replica_states
            return killed not in replicas and len(replicas) == 2 and states == {"RUNNING": 2}
        await until(restarted)

    asyncio.run(run())


async def _gone(store, key):
    return await store.checkpoint(key) is None


def test_serve_shutdown_hands_streams_over(service, redis_url, rng):
    """Shuts Serve down (so it runs last in this module): each open stream is
    checkpointed at its latest frame, fewer than checkpoint_every frames in."""
    ids = ["handover-a", "handover-b", "handover-c"]
    X = rng.standard_normal((7, H)).astype(np.float32)
    _, snaps = reference(X)

    async def run():
        conns = [(await connect(f"{service}?id={sid}"))[0] for sid in ids]
        for seq in range(1, 8):
            for ws in conns:
                await step(ws, seq, X[seq - 1])
        await asyncio.get_running_loop().run_in_executor(None, serve.shutdown)
        store = RedisStore(redis_url, prefix=PREFIX)
        try:
            for sid in ids:
                _, seq, snapshot = await store.checkpoint(sid)
                assert seq == 7 and snapshot == snaps[6], sid
        finally:
            await store.aclose()
        for ws in conns:
            await ws.close()

    asyncio.run(run())
