"""The example WebSocket service (examples/ws_service.py) under uvicorn on a free loopback
port, driven by `lstm-engine loadtest` and by the load test's client; and the load
test's refusals. Behaviour only: how fast is measured elsewhere."""
import asyncio
import importlib.util
import json
import pathlib
import socket
import threading

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


@pytest.fixture(scope="module")
def service(engine):
    """ws://127.0.0.1:<free port>/stream, served from a thread; stopped afterwards."""
    pytest.importorskip("fastapi")
    pytest.importorskip("websockets")  # uvicorn's WebSocket protocol
    uvicorn = pytest.importorskip("uvicorn")
    path = pathlib.Path(__file__).parents[1] / "examples" / "ws_service.py"
    spec = importlib.util.spec_from_file_location("ws_service", path)
    ws_service = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ws_service)
    with socket.socket() as s:  # a free port: bound and released, then given to uvicorn
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(ws_service.create_app(engine), host="127.0.0.1", port=port,
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


def test_loadtest_against_the_example(service, tmp_path, capsys):
    out = tmp_path / "load.json"
    assert main(["loadtest", service, "--streams", "6", "--period-ms", "20", "--seconds", "1",
                 "--json", str(out)]) == 0
    assert "6 streams" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["sent"] == 6 * 50 and r["answered"] == r["sent"] and r["dropped"] == 0 and r["unexpected"] == 0
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
    errors = [json.loads(t) for t in texts]
    assert [e["seq"] for e in errors] == [12, None, 13]
    assert "NaN" in errors[0]["error"] and "expected shape" in errors[2]["error"]


@pytest.mark.parametrize("url, message", [
    ("ws://10.1.2.3:8000/stream", "not a loopback address"),
    ("http://127.0.0.1:8000/stream", "ws:// URL"),
])
def test_loadtest_refuses_other_hosts(url, message, capsys):
    assert main(["loadtest", url, "--streams", "1", "--seconds", "1"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--streams", "100000"], ["--streams", "0"], ["--seconds", "100000"],
                                  ["--period-ms", "0"]])
def test_loadtest_bounds(args, capsys):
    assert main(["loadtest", "ws://127.0.0.1:9/x", *args]) == 2  # refused before connecting
    assert "expected" in capsys.readouterr().err


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
