"""A real Redis server for tests: Debian's `redis-server` on a free loopback port, with
nothing written to disk, stopped afterwards (`.ci/run` installs it)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:  # bound and released, then given to the server
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(port=None, data_dir=None):
    """Yields the server's redis:// URL (on `port`, else a free one). With `data_dir`,
    the server logs every write there (append-only file) and a restart on the same
    folder finds them again; else it writes nothing to disk. Without
    redis-server the test is skipped, except in CI (CI set), where that is a failure:
    CI installs it."""
    exe = shutil.which("redis-server")
    if exe is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    with tempfile.TemporaryDirectory() as home:
        port = port or free_port()
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if data_dir else ["--appendonly", "no"]
        proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", *persist,
                                 "--dir", str(data_dir or home), "--protected-mode", "yes"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
                assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)
