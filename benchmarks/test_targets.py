"""The other DESIGN §5 targets: stacked layers, threads, start-up. Measured, not asserted."""
import subprocess
import sys

import numpy as np
import pytest

import lstm_engine as le
from lstm_engine import bench


@pytest.mark.parametrize("layers", [1, 3])
def test_stacked_step(benchmark, layers):
    """Target: a 3-layer H=256 model costs <= 3.2x a 1-layer one per step."""
    s = le.Engine(bench.default_model(256, layers=layers)).open_stream()
    x = np.full(256, 0.1, np.float32)
    benchmark.group = "step H=256, 1 vs 3 layers"
    benchmark.pedantic(s.step, args=(x,), rounds=300, iterations=5, warmup_rounds=20)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_step(benchmark, threads):
    """Target: threads=2 >= 1.5x faster than threads=1 at H=1024."""
    s = le.Engine(bench.default_model(1024), threads=threads).open_stream()
    x = np.full(1024, 0.1, np.float32)
    benchmark.group = "step H=1024, threads"
    benchmark.pedantic(s.step, args=(x,), rounds=100, iterations=2, warmup_rounds=5)


STARTUP = """
import time
t0 = time.perf_counter()
import numpy as np, lstm_engine as le
m = le.load({path!r})
s = le.Engine(m).open_stream()
s.step(np.zeros(m.input_size, np.float32))
print(time.perf_counter() - t0)
"""


def test_startup(benchmark, tmp_path):
    """Target: import + load + Engine + first step <= 1 s with a warm JIT cache."""
    path = tmp_path / "m.lstm"
    bench.default_model(256).save(path)
    code = STARTUP.format(path=str(path))
    subprocess.run([sys.executable, "-c", code], check=True)  # warms the cache
    benchmark.group = "start-up (fresh process, warm JIT cache)"
    benchmark.extra_info["note"] = "wall time of a whole process, interpreter start included"
    benchmark.pedantic(lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True),
                       rounds=5, iterations=1)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("hidden", [512, 1024])
def test_int8_step(benchmark, precision, hidden):
    """Target: int8 weights >= 2x faster than fp32 at H >= 512."""
    s = le.Engine(bench.default_model(hidden), precision=precision).open_stream()
    x = np.full(hidden, 0.1, np.float32)
    benchmark.group = f"step H={hidden}, fp32 vs int8"
    benchmark.pedantic(s.step, args=(x,), rounds=100, iterations=3, warmup_rounds=5)


@pytest.mark.parametrize("system", [bench.ENGINE, "onnxruntime"])
def test_many_streams(benchmark, system):
    """Target: step_many over 32 streams at H=256 >= 1.4x faster per stream than
    onnxruntime at batch 32 (benchmark time / 32 = per stream)."""
    model = bench.default_model(256)
    s = {x.name: x for x in bench.systems(model, against=("ort",))}[system]
    X = np.random.default_rng(0).uniform(-1, 1, (32, 256)).astype(np.float32)
    benchmark.group = "32 streams, one frame each, H=256"
    benchmark.pedantic(s.many, args=(X,), rounds=200, iterations=1, warmup_rounds=5)
