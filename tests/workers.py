"""Example services (examples/ws_service.py) as real worker processes for tests, on free
loopback ports, each logging to a file that a failed start shows."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from redis_server import free_port

ROOT = pathlib.Path(__file__).parents[1]
WORKER_INPUTS = 5  # input width of the conftest fixture worker_model
START_S = 120  # a cold kernel cache compiles for a while


class Workers:
    """Workers by name, all serving `model_file` with `redis_url` and the same further
    ws_service.py flags (`options`, e.g. "--checkpoint-every", "5"), started on demand:
    a killed one starts again (on a new port) when a test asks for it."""

    def __init__(self, model_file, redis_url, logs, *options):
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
        pytest.importorskip("websockets")  # uvicorn's WebSocket protocol
        self.model_file, self.redis_url, self.logs, self.options = model_file, redis_url, pathlib.Path(logs), options
        self.procs, self.ports = {}, {}

    def start(self, *names):
        """Start the named workers not running; returns once every one of them listens."""
        starting = [n for n in names if n not in self.procs or self.procs[n].poll() is not None]
        for name in starting:
            self.ports[name] = port = free_port()
            with open(self.logs / f"{name}-{port}.log", "w") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, str(ROOT / "examples" / "ws_service.py"), "--model", str(self.model_file),
                     "--redis", self.redis_url, *self.options, "--port", str(port), "--worker", name],
                    env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        for name in starting:  # ready once uvicorn listens (after start-up: model, kernels, app)
            while True:
                proc = self.procs[name]
                assert proc.poll() is None, f"worker {name} exited with {proc.returncode}: " + "".join(
                    p.read_text() for p in self.logs.glob(f"{name}-*.log"))
                try:
                    socket.create_connection(("127.0.0.1", self.ports[name]), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"worker {name} did not listen within {START_S} s"
                    time.sleep(0.05)

    def url(self, name, sid=None, received=None):
        query = "&".join(f"{k}={v}" for k, v in (("id", sid), ("received", received)) if v is not None)
        return f"ws://127.0.0.1:{self.ports[name]}/stream" + (f"?{query}" if query else "")

    def stats(self, name) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/stats", timeout=5) as r:
            return json.loads(r.read())

    def kill(self, name, sig=signal.SIGKILL):
        """Signal the worker; returns once it has exited."""
        proc = self.procs[name]
        os.kill(proc.pid, sig)
        proc.wait(10)

    def stop(self):
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
