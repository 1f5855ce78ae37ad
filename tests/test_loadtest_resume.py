"""`lstm-engine loadtest --resume` against two example services (examples/ws_service.py)
as real worker processes sharing a real Redis: one is killed (SIGKILL) mid-run and its
streams resume on the other, every output equal to a local reference stream's.
Behaviour only: how fast a stream recovers is measured, not asserted."""
import asyncio
import json

import numpy as np
import pytest

from workers import WORKER_INPUTS, Workers

I, STREAMS, PERIOD_MS, SECONDS = WORKER_INPUTS, 4, 20, 2.0
FRAMES = round(SECONDS * 1000 / PERIOD_MS)
KILL_AT = 30  # the worker dies when its stream 0 has this output: past three checkpoints of 8 frames


@pytest.fixture
def workers(worker_engine, worker_model, redis_url, request, tmp_path):
    """start(checkpoint_every) -> two workers, A and B, with a key prefix of this test's
    own in Redis; (their processes, their URLs, the prefix). Stopped afterwards."""
    started = []
    prefix = f"lt-{request.node.name}:"

    def start(checkpoint_every):
        w = Workers(worker_model, redis_url, tmp_path, "--checkpoint-every", str(checkpoint_every), "--prefix", prefix)
        started.append(w)
        w.start("A", "B")
        return [w.procs["A"], w.procs["B"]], [w.url("A"), w.url("B")], prefix

    yield start
    for w in started:
        w.stop()


def stored_keys(redis_url, prefix):
    """The stream keys under `prefix`, which the workers wrote to (its epoch counter is there)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        keys = {k.decode() for k in r.keys(prefix + "*")}
    finally:
        r.close()
    assert prefix + "epoch" in keys  # the workers claimed their streams here
    return sorted(keys - {prefix + "epoch"})


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


def test_streams_of_a_killed_worker_resume_on_the_other(workers, worker_engine, redis_url):
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
        s = worker_engine.open_stream()
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

