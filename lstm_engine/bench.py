"""Benchmark runner: the engine next to its peers, measured interleaved in one process.

Statistics (`measure`) are kept apart from presentation (`report`). Every figure is a
median over many timed calls, with p99 and spread; speed-ups are ratios of medians
taken in the same run, never of numbers from elsewhere.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from .engine import Engine
from .model import Direction, Layer, Model

NOISY = 0.25  # warn when the interquartile range exceeds this fraction of the median


def default_model(hidden: int, inputs: int | None = None, layers: int = 1, seed: int = 0) -> Model:
    """The embedded default: random weights, one stack of forward layers, I = H."""
    rng = np.random.default_rng(seed)
    I = hidden if inputs is None else inputs
    out = []
    for _ in range(layers):
        s = 1 / np.sqrt(I + hidden)
        out.append(Layer([Direction(rng.uniform(-s, s, (4 * hidden, I)), rng.uniform(-s, s, (4 * hidden, hidden)),
                                    rng.uniform(-0.5, 0.5, 4 * hidden))]))
        I = hidden
    return Model(out)


def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import numba

    info = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "isa": [f for f in ("avx2", "fma", "avx512f", "asimd") if f in flags],
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


class _OrtPeer:
    """onnxruntime on the same model, state carried between calls like a Stream."""

    name = "onnxruntime"

    def __init__(self, model: Model):
        import onnxruntime as ort

        from converters import to_onnx

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._s = ort.InferenceSession(to_onnx(model, with_state=True).SerializeToString(), so,
                                       providers=["CPUExecutionProvider"])
        self._state = {}
        for li, layer in enumerate(model.layers):
            self._state[f"h0_{li}"] = np.zeros((1, 1, layer.proj_size), np.float32)
            self._state[f"c0_{li}"] = np.zeros((1, 1, layer.hidden_size), np.float32)
        self._outs = ["Y"] + [n for li in range(len(model.layers)) for n in (f"hn_{li}", f"cn_{li}")]

    def run(self, X):
        feed = dict(self._state)
        feed["X"] = X[:, None]
        res = self._s.run(self._outs, feed)
        for k, name in enumerate(self._outs[1:]):
            self._state[name.replace("n_", "0_")] = res[1 + k]
        return res[0]

    def step(self, x):
        return self.run(x[None])


def _stats(samples: list) -> dict:
    a = np.asarray(samples) * 1e6
    q1, med, q3, p99 = np.percentile(a, [25, 50, 75, 99])
    return {"median_us": float(med), "p99_us": float(p99), "iqr_us": float(q3 - q1), "rounds": int(a.size)}


def _interleaved(fns: dict, rounds: int, per_round: int) -> dict:
    """Time each callable per_round times per round, alternating between them."""
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in samples.items()}


def measure(model: Model, steps: int = 2000, chunk: int = 100, peers=("onnxruntime",), progress=None) -> dict:
    """Step and chunk latencies of the engine and its peers on `model` (float inputs)."""
    eng = Engine(model)
    rng = np.random.default_rng(1)
    I = model.layers[0].input_size
    x = rng.uniform(-1, 1, I).astype(np.float32)
    X = rng.uniform(-1, 1, (chunk, I)).astype(np.float32)
    stream = eng.open_stream()
    systems = {"lstm-engine": stream}
    if "onnxruntime" in peers:
        try:
            systems["onnxruntime"] = _OrtPeer(model)
        except ImportError:
            if progress:
                progress("onnxruntime is not installed: skipped")
    for s in systems.values():  # warm-up outside the timings
        for _ in range(20):
            s.step(x)
        s.run(X)
    weight_bytes = sum(d.W.nbytes + d.R.nbytes for _, _, _, d in model.cells())
    per_round = 20
    rounds = max(5, steps // per_round)
    step = _interleaved({k: (lambda s=s: s.step(x)) for k, s in systems.items()}, rounds, per_round)
    chunk_rounds = max(5, steps // (chunk * 2))
    run = _interleaved({k: (lambda s=s: s.run(X)) for k, s in systems.items()}, chunk_rounds, 1)
    for r in run.values():
        for key in ("median_us", "p99_us", "iqr_us"):
            r[key] /= chunk
    # the bare gate product [W R] @ [x; h] of the same weights: the cost of reading them
    blas = None
    if len(model.layers) == 1 and model.layers[0].num_directions == 1:
        d = model.layers[0].directions[0]
        WR = np.concatenate([d.W, d.R], axis=1)
        v = rng.uniform(-1, 1, WR.shape[1]).astype(np.float32)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # peers run on one thread; so does BLAS
            blas = _interleaved({"blas": lambda: WR @ v}, rounds, per_round)["blas"]
    return {"hidden": model.layers[0].hidden_size, "input": I, "layers": len(model.layers),
            "weight_bytes": weight_bytes, "chunk": chunk, "step": step, "run": run, "blas_gemv": blas}


def report(results: list, info: dict) -> str:
    """A table a person reads in one screen."""
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, ISA {'+'.join(info['isa']) or '?'}",
             f"python {info['python']}, numpy {info['numpy']}, numba {info['numba']}, "
             f"onnxruntime {info['onnxruntime'] or 'not installed'}", ""]
    hdr = f"{'H':>5} {'system':<12} {'step p50 µs':>12} {'p99 µs':>9} {'speed-up':>9} " \
          f"{'chunk µs/frame':>15} {'speed-up':>9} {'GB/s':>6}"
    lines += [hdr, "-" * len(hdr)]
    noisy = False
    for r in results:
        eng_s, eng_r = r["step"]["lstm-engine"], r["run"]["lstm-engine"]
        for name in r["step"]:
            s, c = r["step"][name], r["run"][name]
            up_s = "" if name == "lstm-engine" else f"{s['median_us'] / eng_s['median_us']:.2f}x"
            up_c = "" if name == "lstm-engine" else f"{c['median_us'] / eng_r['median_us']:.2f}x"
            gbs = r["weight_bytes"] / s["median_us"] / 1e3
            lines.append(f"{r['hidden']:>5} {name:<12} {s['median_us']:>12.1f} {s['p99_us']:>9.1f} "
                         f"{up_s:>9} {c['median_us']:>15.2f} {up_c:>9} {gbs:>6.1f}")
            noisy |= s["iqr_us"] > NOISY * s["median_us"]
        if r["blas_gemv"]:
            b = r["blas_gemv"]
            lines.append(f"{r['hidden']:>5} {'numpy BLAS':<12} {b['median_us']:>12.1f} {b['p99_us']:>9.1f} "
                         f"{'':>9} {'(bare [W R]·[x;h])':>15} {'':>9} {r['weight_bytes'] / b['median_us'] / 1e3:>6.1f}")
    lines += ["", "speed-up = peer median / lstm-engine median (higher: lstm-engine faster); "
              "GB/s = weight bytes read per step / step time"]
    if noisy:
        lines.append("warning: spread above 25% of the median somewhere: the machine was busy, "
                     "figures are less trustworthy")
    return "\n".join(lines)
