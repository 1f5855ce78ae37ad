"""A long-running service steps streams for days: nothing a call allocates may outlive
it. numba's runtime counts what its kernels allocate and free (NUMBA_NRT_STATS, read at
start-up, hence a fresh process); the process's resident memory must stay flat too."""
import json
import os

import pytest

from fresh_process import run_python

_LOOP = """
import json, os, numpy as np, lstm_engine
from lstm_engine import bench
from numba.core.runtime import rtsys

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

rng = np.random.default_rng(0)
e = lstm_engine.Engine(bench.default_model(48, layers=2))
streams = [e.open_stream() for _ in range(8)]
x = rng.standard_normal(48).astype(np.float32)
X = rng.standard_normal((20, 48)).astype(np.float32)
XN = rng.standard_normal((8, 48)).astype(np.float64)  # converted at the boundary each call

def work(n):
    for i in range(n):
        s = streams[i % 8]
        s.step(x)
        s.step(x.astype(np.float64))
        if i % 10 == 0:
            s.run(X)
            e.step_many(streams, XN)
            e.run(X[:, None].repeat(2, 1))
            e.restore(s.snapshot())

work(2000)  # warm: numpy's and Python's own caches settle
a, r0 = rtsys.get_allocation_stats(), rss()
work(20000)
b, r1 = rtsys.get_allocation_stats(), rss()
print(json.dumps({"alloc": b.alloc - a.alloc, "free": b.free - a.free, "mi_alloc": b.mi_alloc - a.mi_alloc,
                  "mi_free": b.mi_free - a.mi_free, "rss_growth": r1 - r0}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc")
def test_forty_thousand_steps_leave_no_allocation_behind():
    os.environ["NUMBA_NRT_STATS"] = "1"
    try:
        got = json.loads(run_python(_LOOP))
    finally:
        del os.environ["NUMBA_NRT_STATS"]
    assert got["alloc"] > 0 and got["alloc"] == got["free"] and got["mi_alloc"] == got["mi_free"], got
    assert got["rss_growth"] < 4 << 20, got  # 40 000 steps, 2000 chunks, step_many and runs
