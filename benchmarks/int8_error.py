"""bf16 and int8 against fp32 on the trained fixtures, ours beside onnxruntime's and
PyTorch's int8 (DESIGN §6): python benchmarks/int8_error.py

Streams each fixture's held-out inputs (tests/data/, see benchmarks/train_fixtures.py)
one step per call through every system, state carried, and prints max and mean
|output - lstm-engine fp32's|. The peers run their documented recipe (one weight scale
per tensor) and, as "per row", with one scale per gate row like lstm-engine's int8.
Needs onnxruntime and torch for their rows (skipped with a note when missing).
"""
import os
import sys

import numpy as np

from lstm_engine import reference
from lstm_engine.bench import error_vs
from lstm_engine.peers import engine_system, int8_peer, systems

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import trained  # tests/trained.py: fixture paths, gate statistics


def fixture_errors(model, feeds):
    """{system: {"max_abs", "mean_abs"}} over the inputs streamed one step per call."""
    rows = {"lstm-engine bf16": engine_system(model, precision="bf16"),
            "lstm-engine int8-dynamic": engine_system(model, precision="int8-dynamic")}
    for s in systems(model, ("ort", "torch"), "int8", progress=print):
        rows["lstm-engine int8" if s.name == "lstm-engine" else s.name] = s
    for key in ("ort", "torch"):  # their scales at our granularity: one per gate row
        try:
            s = int8_peer(key, model, per_channel=True)
            rows[s.name] = s
        except ImportError:
            pass  # systems() above said so
    return error_vs(engine_system(model), rows, lambda s, x: s.step(x), feeds)


def main():
    for name in trained.FIXTURES:
        model, inputs = trained.load(name)
        feeds = trained.step_inputs(model, inputs)
        print(f"\n{name}: {len(feeds)} held-out steps, {model.num_parameters():,} parameters, gate "
              f"pre-activations |z| > 4: {trained.saturated_fraction(model, inputs):.1%}")
        s = engine_system(model)
        d = np.abs(np.stack([s.step(x) for x in feeds]) - reference.run(model, inputs[:, None])[0][:, 0])
        print(f"  lstm-engine fp32 vs float64 reference: max {d.max():.2e}, mean {d.mean():.2e}")
        print(f"  {'vs lstm-engine fp32':<28} {'max':>9} {'mean':>9}")
        for label, e in fixture_errors(model, feeds).items():
            print(f"  {label:<28} {e['max_abs']:>9.2e} {e['mean_abs']:>9.2e}")


if __name__ == "__main__":
    main()
