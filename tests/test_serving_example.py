"""The example WebSocket service (examples/ws_service.py) under uvicorn on a free loopback
port, driven by `lstm-engine loadtest` and by the load test's client; and the load
test's refusals. Behaviour only: how fast is measured elsewhere."""
import asyncio
import contextlib
import importlib.util
import json
import pathlib
import socket
import threading
import time

import numpy as np
import pytest

import lstm_engine as le
from helpers import make_model, rand
from lstm_engine.cli import main
from lstm_engine.serving import wire
from lstm_engine.serving.wsclient import connect

I = 5


@pytest.fixture(scope="module")
def engine():
    return le.Engine(make_model(np.random.default_rng(14), I, (24,), head=4))


def example_module():
    pytest.importorskip("fastapi")
    pytest.importorskip("websockets")  # uvicorn's WebSocket protocol
    path = pathlib.Path(__file__).parents[1] / "examples" / "ws_service.py"
    spec = importlib.util.spec_from_file_location("ws_service", path)
    ws_service = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ws_service)
    return ws_service


@contextlib.contextmanager
def serving(app):
    """ws://127.0.0.1:<free port>/stream of `app`, served from a thread; stopped afterwards."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:  # a free port: bound and released, then given to uvicorn
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", ws="websockets-sansio", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        thread.join(0.02)
    assert server.started, "uvicorn did not start"
    yield f"ws://127.0.0.1:{port}/stream"
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def service(engine):
    with serving(example_module().create_app(engine)) as url:
        yield url


def test_loadtest_against_the_example(service, tmp_path, capsys):
    out = tmp_path / "load.json"
    assert main(["loadtest", service, "--streams", "6", "--period-ms", "20", "--seconds", "1",
                 "--json", str(out)]) == 0
    assert "6 streams" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["sent"] == r["answered"] == 6 * 50  # the hellos are neither answers nor refusals
    assert r["refused"] == r["dropped"] == r["unexpected"] == 0
    assert set(r["latency_ms"]) == {"p50", "p99", "p99.9", "max"}


def test_find_max_is_bounded(service, tmp_path, monkeypatch):
    from lstm_engine.serving import loadtest

    monkeypatch.setattr(loadtest, "MAX_STREAMS", 4)  # doubling from 2 stops at the cap
    out = tmp_path / "max.json"
    assert main(["loadtest", service, "--streams", "2", "--period-ms", "50", "--seconds", "0.5", "--find-max",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    sizes = [t["streams"] for t in r["trials"]]  # which sizes run depends on the speed found
    assert sizes[0] == 2 and all(1 <= n <= 4 for n in sizes) and len(sizes) <= loadtest.MAX_TRIALS
    assert r["max_streams"] in [0] + sizes


def test_example_answers_in_order_and_refuses_bad_frames(service, engine, rng):
    X = rand(rng, 4, I)
    host, port = service.split("/")[2].split(":")

    async def session():
        got, texts = [], []
        done = asyncio.Event()

        def on_binary(data):
            got.append(wire.decode(data))
            if len(got) == 4:
                done.set()

        client, headers = await connect(host, int(port), "/stream", on_binary, texts.append)
        for n, x in enumerate(X[:2]):
            client.send_binary(wire.encode(10 + n, x))
        client.send_binary(wire.encode(12, np.full(I, np.nan)))  # refused; the stream goes on
        client.send_binary(b"\x01\x02\x03")  # not a frame
        client.send_binary(wire.encode(13, np.zeros(I + 1)))  # the wrong width
        for n, x in enumerate(X[2:]):
            client.send_binary(wire.encode(14 + n, x))
        await asyncio.wait_for(done.wait(), 10)
        client.close()
        await asyncio.wait_for(client.closed, 10)
        return headers, got, texts

    headers, got, texts = asyncio.run(session())
    assert headers["x-input-size"] == str(I) and headers["x-output-size"] == "4"
    assert [seq for seq, _ in got] == [10, 11, 14, 15]
    s = engine.open_stream()
    assert all(np.array_equal(y, s.step(x)) for (_, y), x in zip(got, X))
    hello, *errors = [json.loads(t) for t in texts]
    assert hello["stream"] is None and hello["resume_seq"] is None and hello["worker"]
    assert [e["seq"] for e in errors] == [12, None, 13]
    assert "NaN" in errors[0]["error"] and "expected shape" in errors[2]["error"]


@pytest.mark.parametrize("url, message", [
    ("ws://10.1.2.3:8000/stream", "not a loopback address"),
    ("http://127.0.0.1:8000/stream", "ws:// URL"),
])
def test_loadtest_refuses_other_hosts(url, message, capsys):
    assert main(["loadtest", url, "--streams", "1", "--seconds", "1"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--streams", "100000"], "expected"), (["--streams", "0"], "expected"),
                                           (["--seconds", "100000"], "expected"), (["--period-ms", "0"], "expected"),
                                           (["--keep", "8"], "add --resume")])
def test_loadtest_bounds(args, message, capsys):
    assert main(["loadtest", "ws://127.0.0.1:9/x", *args]) == 2  # refused before connecting
    assert message in capsys.readouterr().err


def test_find_max_search():
    from lstm_engine.serving import loadtest

    runs = []

    async def run(n):  # serves up to 300 streams; the first run at 400 found the generator starved
        runs.append(n)
        lagged = n == 400 and runs.count(400) == 1
        return {"streams": n, "period_ms": 10.0, "dropped": 0, "late": 0, "answered": n, "send_lag_p99_ms":
                6.0 if lagged else 1.0, "latency_ms": {"p50": 1, "p99": 5.0 if n <= 300 else 20.0, "p99.9": 30}}

    r = asyncio.run(loadtest.find_max(run, 100, progress=lambda _: None))
    assert runs[:4] == [100, 200, 400, 400] and len(runs) <= loadtest.MAX_TRIALS
    assert 300 * 0.95 <= r["max_streams"] <= 300 and r["max_streams"] in runs


def ws_connect(url):
    from websockets.asyncio.client import connect

    return connect(url, compression=None)


@pytest.mark.parametrize("query", ["id=", "id=a%20b", "id=" + "x" * 129, "id=%C3%A9", "id=a&received=-1",
                                   "id=a&received=18446744073709551616", "received=1.5"])
def test_bad_stream_ids_are_refused(service, query):
    import websockets

    async def session():
        async with ws_connect(f"{service}?{query}"):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(session())
    assert refused.value.response.status_code == 403


def test_named_stream_without_a_store(service, engine, rng):
    """Without a store a stream id names the connection's stream but nothing resumes: a
    second connection of the id takes over (the first is closed with 4000) at zero state."""
    import websockets

    X = rand(rng, 3, I)
    sid = "a-Z_0.9:x" + "y" * 119  # every kind of character allowed, 128 of them

    async def session():
        async with ws_connect(f"{service}?id={sid}&received=18446744073709551615") as old:
            assert json.loads(await old.recv())["stream"] == sid
            for seq in range(2):
                await old.send(wire.encode(seq, X[seq]))
                await old.recv()
            async with ws_connect(f"{service}?id={sid}&received=1") as new:
                hello = json.loads(await new.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await old.recv()
                await new.send(wire.encode(0, X[2]))
                return hello, closed.value.rcvd.code, wire.decode(await new.recv())

    hello, code, (seq, y) = asyncio.run(session())
    assert hello["stream"] == sid and hello["resume_seq"] is None and code == 4000
    assert seq == 0 and np.array_equal(y, engine.open_stream().step(X[2]))


def test_an_idle_stream_is_parked_and_resumes_exactly(engine, rng):
    """Without a store, a stream evicted for idleness is parked and its connection's next
    frame continues it."""
    app = example_module().create_app(engine, idle_timeout_s=0.05)
    X = rand(rng, 3, I)

    async def session(url):
        async with ws_connect(url) as ws:
            await ws.recv()  # the hello
            got = []
            for seq, x in enumerate(X):
                if seq == 2:  # idle past the timeout: the sweeper evicts the stream
                    for _ in range(500):
                        if app.state.batcher.stats()["evicted"]:
                            break
                        await asyncio.sleep(0.01)
                await ws.send(wire.encode(seq, x))
                got.append(wire.decode(await ws.recv())[1])
            return got

    with serving(app) as url:
        got = asyncio.run(session(url))
    assert app.state.batcher.stats()["evicted"] >= 1
    s = engine.open_stream()
    assert all(np.array_equal(y, s.step(x)) for y, x in zip(got, X))


def test_cli_key_prefix_and_ttl(redis_url, tmp_path, rng):
    """ws_service.py --prefix --ttl: a released stream's checkpoint is under the prefix
    and expires (at most --ttl after its write; without --ttl it would stay)."""
    import redis
    from workers import Workers

    model = tmp_path / "net.lstm"
    make_model(np.random.default_rng(14), I, (24,), head=4).save(model)
    workers = Workers(model, redis_url, tmp_path, "--prefix", "ex-ttl:", "--ttl", "300")
    try:
        workers.start("A")

        async def session():
            async with ws_connect(workers.url("A", "ttl-stream")) as ws:
                await ws.recv()  # the hello
                await ws.send(wire.encode(0, rand(rng, I)))
                await ws.recv()
                await ws.close(1001)  # not the end of the stream: the worker releases it

        asyncio.run(session())
        r = redis.Redis.from_url(redis_url)
        try:
            for _ in range(500):  # the release lands after the connection has closed
                if r.exists("ex-ttl:s:ttl-stream"):
                    break
                time.sleep(0.01)
            assert sorted(r.keys("ex-ttl:*")) == [b"ex-ttl:epoch", b"ex-ttl:s:ttl-stream"]
            assert 0 < r.pttl("ex-ttl:s:ttl-stream") <= 300_000
        finally:
            r.close()
    finally:
        workers.stop()
