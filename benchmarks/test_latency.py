"""pytest benchmarks/ --benchmark-only: step and chunked-run latency, engine beside
onnxruntime on the same weights (DESIGN §5). Speed is measured here, never asserted."""
import numpy as np
import pytest

CHUNK = 100


@pytest.mark.parametrize("system", ["lstm-engine", "onnxruntime"])
def test_step(benchmark, systems, system):
    table, model = systems
    s = table[system]
    x = np.random.default_rng(0).uniform(-1, 1, model.input_size).astype(np.float32)
    benchmark.group = f"step H={model.layers[0].hidden_size}"
    benchmark.pedantic(s.step, args=(x,), rounds=300, iterations=5, warmup_rounds=20)


@pytest.mark.parametrize("system", ["lstm-engine", "onnxruntime"])
def test_chunk(benchmark, systems, system):
    table, model = systems
    s = table[system]
    X = np.random.default_rng(0).uniform(-1, 1, (CHUNK, model.input_size)).astype(np.float32)
    benchmark.group = f"run T={CHUNK} H={model.layers[0].hidden_size}"
    benchmark.pedantic(s.run, args=(X,), rounds=30, iterations=1, warmup_rounds=3)
