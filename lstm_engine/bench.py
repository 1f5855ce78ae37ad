"""Benchmark runner: the engine next to its peers, measured interleaved in one process.

Statistics (`measure`) are kept apart from presentation (`report`, `plot`). Every
figure is a median over many timed calls, with p99 and spread; speed-ups are ratios
of medians taken in the same run, never of numbers from elsewhere. JIT compilation
and each system's warm-up happen before any timing.
"""
from __future__ import annotations

import glob
import os
import platform
import time

import numpy as np

from .errors import ModelError
from .model import Direction, Layer, Model
from .packing import WEIGHT_BYTES
from .peers import ENGINE, PEERS, engine_system, systems

NOISY = 0.25  # warn when the interquartile range exceeds this fraction of the median
NAME = 16  # width of the system column: "onnxruntime int8"


def default_model(hidden: int, inputs: int | None = None, layers: int = 1, seed: int = 0) -> Model:
    """The embedded default: random weights, a stack of forward layers, I = H."""
    rng = np.random.default_rng(seed)
    I = hidden if inputs is None else inputs
    out = []
    for _ in range(layers):
        s = 1 / np.sqrt(I + hidden)
        out.append(Layer([Direction(rng.uniform(-s, s, (4 * hidden, I)), rng.uniform(-s, s, (4 * hidden, hidden)),
                                    rng.uniform(-0.5, 0.5, 4 * hidden))]))
        I = hidden
    return Model(out)


def cpu_info() -> dict:
    """The CPU and the kernel variant lstm-engine runs on it: cheap, no peer imported."""
    from . import kernel_isa
    from .kernels.isa import ISA

    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import llvmlite.binding as llvm

    llvm_cpu = llvm.get_host_cpu_name()
    return {"cpu": cpu or platform.processor() or llvm_cpu, "llvm_cpu": llvm_cpu, "cores": os.cpu_count(),
            "machine": platform.machine(), "system": platform.system(),
            "isa": [name for flag, name in (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512"),
                                            ("asimd", "NEON")) if flag in flags],
            "kernel_isa": kernel_isa(), "kernel_variant": ISA.key, "cache_bytes": _caches()}


def _caches() -> dict:
    """Cache sizes of cpu0 from sysfs ({"L1d": 49152, "L2": ..., "L3": ...}); {} where
    there is no sysfs. What a weight matrix fits in decides how fast a step can read it."""
    out = {}
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size = (_read(os.path.join(index, n)) for n in ("level", "type", "size"))
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            out[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = int(size.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue  # an entry this kernel does not fill in
    return out


def _read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def blas_info() -> list:
    """The BLAS libraries loaded in this process and the kernel each runs (threadpoolctl):
    numpy's OpenBLAS picks its kernel at load, and OPENBLAS_CORETYPE overrides the CPU's,
    so the numpy BLAS row depends on the environment as much as on the machine."""
    from threadpoolctl import threadpool_info

    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "filepath")}
            for lib in threadpool_info() if lib["user_api"] == "blas"]


def machine_info() -> dict:
    import numba

    info = cpu_info()
    info.update({"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                 "blas": blas_info(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")})
    for mod, key in (("onnxruntime", "onnxruntime"), ("torch", "torch"), ("openvino", "openvino")):
        try:
            info[key] = __import__(mod).__version__
        except ImportError:
            info[key] = None
    return info


def kernel_line(info: dict) -> str:
    """One line naming the kernel variant and the CPU it was chosen for."""
    return f"kernels: {info['kernel_isa']} ({info['kernel_variant']}) on {info['cpu']} (LLVM: {info['llvm_cpu']})"


# ---- statistics ---------------------------------------------------------------------
def _stats(samples) -> dict:
    a = np.asarray(samples) * 1e6
    q1, med, q3, p99 = np.percentile(a, [25, 50, 75, 99])
    return {"median_us": float(med), "p99_us": float(p99), "iqr_us": float(q3 - q1), "rounds": int(a.size)}


def _per(results: dict, n: int) -> dict:
    """Per-call statistics of every system turned into per-frame (or per-stream) ones."""
    for r in results.values():
        for key in ("median_us", "p99_us", "iqr_us"):
            r[key] /= n
    return results


ROUND_BUDGET = 0.01  # seconds a system may spend per round: slow peers get fewer calls


def _interleaved(fns: dict, rounds: int, per_round: int, est: dict | None = None) -> dict:
    """Time each callable up to per_round times per round, alternating between them.

    est: a rough seconds-per-call per system; a slow system gets as many calls per
    round as fit ROUND_BUDGET (at least one), so one slow peer cannot stall the run.
    """
    samples = {k: [] for k in fns}
    n = {k: per_round if est is None else max(1, min(per_round, int(ROUND_BUDGET / max(est[k], 1e-9))))
         for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(n[name]):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in samples.items()}


def _inputs(model, chunk, rng):
    if model.embedding is not None:
        V = model.embedding.vocab_size
        return int(rng.integers(0, V)), rng.integers(0, V, chunk)
    I = model.layers[0].input_size
    return rng.uniform(-1, 1, I).astype(np.float32), rng.uniform(-1, 1, (chunk, I)).astype(np.float32)


def _weight_bytes(model, precision="fp32") -> int:
    """Bytes of weights a step reads: W and R in the engine's precision, projections in float32."""
    return sum((d.W.size + d.R.size) * WEIGHT_BYTES[precision] + (0 if d.proj is None else 4 * d.proj.size)
               for _, _, _, d in model.cells())


def measure(model: Model, steps: int = 2000, chunk: int = 100, against=PEERS, precision="fp32",
            threads: int = 1, progress=None, streams: int = 0) -> dict:
    """Step and chunk latencies of the engine and its peers on `model`; with streams=N
    also one frame for each of N streams (Engine.step_many; the peers' batch-N call)."""
    rng = np.random.default_rng(1)
    x, X = _inputs(model, chunk, rng)
    systems_ = systems(model, against, precision, threads, progress)
    agree = {"fp32": 1e-3, "bf16": 5e-2, "int8": 1e-1, "int8-dynamic": 1e-1}[precision]  # rounded weights (and x, h)

    def error(what, call, feeds):  # timing a peer is only fair if it computes the same thing
        fp32 = engine_system(model, threads)  # from zero state, as every system is here
        errs = error_vs(fp32, {s.name: s for s in systems_}, call, feeds)
        for name, e in errs.items():
            if e["max_abs"] > agree and progress:
                progress(f"warning: {name} disagrees with {ENGINE} fp32 by {e['max_abs']:.2g} ({what}): "
                         "its timings are not comparable")
        return errs

    # the timed chunk from zero state, in two calls: the error covers the state carried between calls
    half = chunk // 2
    errors = {"chunk": error("chunk", lambda s, X: s.run(X), [X[:half], X[half:]] if half else [X])}
    est_step, est_run = {}, {}
    for s in systems_:  # warm-up outside the timings (compilation, caches, allocators)
        for _ in range(5):
            s.step(x)
        t0 = time.perf_counter()
        for _ in range(10):
            s.step(x)
        est_step[s.name] = (time.perf_counter() - t0) / 10
        s.run(X)
        t0 = time.perf_counter()
        s.run(X)
        est_run[s.name] = time.perf_counter() - t0
    per_round = 20
    rounds = max(3, steps // per_round)
    step = _interleaved({s.name: (lambda s=s: s.step(x)) for s in systems_}, rounds, per_round, est_step)
    run = _per(_interleaved({s.name: (lambda s=s: s.run(X)) for s in systems_}, max(3, steps // (chunk * 2)), 1,
                            est_run), chunk)
    many = None
    if streams and model.streamable:
        Xm = _inputs(model, streams, rng)[1]
        errors["streams"] = error(f"{streams} streams", lambda s, X: s.many(X), [Xm, Xm])  # two frames each
        est_many = {}
        for s in systems_:
            t0 = time.perf_counter()
            s.many(Xm)
            est_many[s.name] = time.perf_counter() - t0
        many = _per(_interleaved({s.name: (lambda s=s: s.many(Xm)) for s in systems_}, max(3, steps // 20), 5,
                                 est_many), streams)
    blas = None  # the bare gate product [W R] @ [x; h] of the same weights: the cost of reading them
    if len(model.layers) == 1 and model.layers[0].num_directions == 1:
        from threadpoolctl import threadpool_limits

        d = model.layers[0].directions[0]
        WR = np.concatenate([d.W, d.R], axis=1)
        v = rng.uniform(-1, 1, WR.shape[1]).astype(np.float32)
        with threadpool_limits(threads):
            blas = _interleaved({"blas": lambda: WR @ v}, rounds, per_round)["blas"]
    layer = model.layers[0]
    return {"name": f"H={layer.hidden_size}", "hidden": layer.hidden_size, "input": model.input_size,
            "layers": len(model.layers), "precision": precision, "threads": threads,
            "precisions": {s.name: s.precision for s in systems_},
            "weight_bytes": _weight_bytes(model, precision), "chunk": chunk,
            "blas_bytes": _weight_bytes(model) if blas else 0,
            "step": step, "run": run, "blas_gemv": blas, "streams": streams if many else 0, "many": many,
            "error": errors}


def error_vs(reference, systems_: dict, call, feeds) -> dict:
    """{label: max and mean |y - reference's y|} of each system in {label: system}, all
    fed `feeds` by call(system, feed), one call per feed in order. Systems carry state:
    each (and the reference) must start from zero state, and is left elsewhere."""
    ref = _outputs(reference, call, feeds)
    out = {}
    for label, s in systems_.items():
        d = np.abs(_outputs(s, call, feeds) - ref)
        out[label] = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
    return out


def _outputs(system, call, feeds):
    return np.concatenate([np.asarray(call(system, f), np.float64).reshape(-1) for f in feeds])


# ---- presentation ---------------------------------------------------------------------
def report(results: list, info: dict) -> str:
    """A table a person reads in one screen."""
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "numba", "onnxruntime", "torch", "openvino")
                         if info.get(k))
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, {info['machine']}, ISA {'+'.join(info['isa']) or '?'}",
             kernel_line(info), _precision_line(results), _blas_line(info), versions, ""]
    hdr = (f"{'model':>8} {'system':<{NAME}} {'step p50 µs':>12} {'p99 µs':>9} {'lstm-engine':>14} "
           f"{'chunk µs/frame':>15} {'lstm-engine':>14} {'GB/s':>6}")
    lines += [hdr, "-" * len(hdr)]  # ratio columns fit "123.45x faster"
    noisy = []
    for r in results:
        eng_s, eng_r = r["step"][ENGINE], r["run"][ENGINE]
        for name in r["step"]:
            s, c = r["step"][name], r["run"][name]
            up_s = "" if name == ENGINE else _versus(s["median_us"], eng_s["median_us"])
            up_c = "" if name == ENGINE else _versus(c["median_us"], eng_r["median_us"])
            gbs = r["weight_bytes"] / s["median_us"] / 1e3
            lines.append(f"{r['name']:>8} {name:<{NAME}} {s['median_us']:>12.1f} {s['p99_us']:>9.1f} {up_s:>14} "
                         f"{c['median_us']:>15.2f} {up_c:>14} {gbs:>6.1f}")
            noisy += [f"{r['name']} {name} {kind}" for kind, m in (("step", s), ("chunk", c))
                      if m["iqr_us"] > NOISY * m["median_us"]]
        if r["blas_gemv"]:
            b = r["blas_gemv"]
            lines.append(f"{r['name']:>8} {'numpy BLAS':<{NAME}} {b['median_us']:>12.1f} {b['p99_us']:>9.1f} "
                         f"{'':>14} {'bare [W R]·[x;h]':>15} {'':>14} {r['blas_bytes'] / b['median_us'] / 1e3:>6.1f}")
    lines += ["", "lstm-engine column: how much faster (or slower) lstm-engine is than that peer, from medians",
              "measured side by side in this run. GB/s: weight bytes read per step / step time; numpy BLAS",
              "is the bare gate product on the same weights, the cost of reading them once, on the BLAS",
              "kernel named above."]
    many = [r for r in results if r.get("many")]
    if many:
        hdr = f"{'model':>8} {'system':<{NAME}} {'streams':>8} {'µs/stream p50':>14} {'p99':>9} {'lstm-engine':>14}"
        lines += ["", hdr, "-" * len(hdr)]
        for r in many:
            eng = r["many"][ENGINE]
            for name, m in r["many"].items():
                up = "" if name == ENGINE else _versus(m["median_us"], eng["median_us"])
                lines.append(f"{r['name']:>8} {name:<{NAME}} {r['streams']:>8} {m['median_us']:>14.2f} "
                             f"{m['p99_us']:>9.2f} {up:>14}")
                noisy += [f"{r['name']} {name} streams"] if m["iqr_us"] > NOISY * m["median_us"] else []
        lines += ["", "streams: one frame for each of N streams per call: Engine.step_many, and each peer's",
                  "batch-N call with its state carried."]
    lines += _error_table(results)
    if noisy:
        lines.append(f"warning: interquartile spread above {NOISY:.0%} of the median for {', '.join(noisy[:4])}"
                     f"{' ...' if len(noisy) > 4 else ''}: the machine was busy, those figures are less trustworthy")
    return "\n".join(lines)


def _error_table(results) -> list:
    """max and mean |difference| from lstm-engine fp32 of every system's outputs."""
    streams = max(r["streams"] for r in results)
    hdr = f"{'model':>8} {'system':<{NAME}} {'chunk max':>10} {'mean':>9}"
    hdr += f" {f'{streams} streams max':>18} {'mean':>9}" if streams else ""
    lines = ["", hdr, "-" * len(hdr)]
    for r in results:
        for name, e in r["error"]["chunk"].items():
            row = f"{r['name']:>8} {name:<{NAME}} {e['max_abs']:>10.2e} {e['mean_abs']:>9.2e}"
            if "streams" in r["error"]:
                m = r["error"]["streams"][name]
                row += f" {m['max_abs']:>18.2e} {m['mean_abs']:>9.2e}"
            lines.append(row)
    return lines + ["", "error: |output - lstm-engine fp32's| from zero state over the inputs timed above: the chunk",
                    "in two calls (state carried between them), and two frames for each of the N streams."]


def _precision_line(results) -> str:
    """What each system computed in, as it reported it; every size listed once."""
    seen = {}
    for r in results:
        for name, p in r["precisions"].items():
            if p not in seen.setdefault(name, []):
                seen[name].append(p)
    return "precision: " + ", ".join(f"{name} {'/'.join(ps)}" for name, ps in seen.items())


_BLAS_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}


def _blas_line(info) -> str:
    """numpy's BLAS and its kernel; when more than one BLAS is loaded, each with its file."""
    several = len(info["blas"]) > 1
    libs = [" ".join(filter(None, (_BLAS_NAMES.get(b["internal_api"], b["internal_api"]), b["version"],
                                   b["architecture"], os.path.basename(b["filepath"]) if several else None)))
            for b in info["blas"]]
    coretype = info["openblas_coretype"]
    return (f"numpy BLAS: {' + '.join(libs) or 'none found by threadpoolctl'}"
            + (f" (OPENBLAS_CORETYPE={coretype} in the environment)" if coretype else ""))


def _versus(peer_us, engine_us) -> str:
    r = peer_us / engine_us
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def plot(results: list, path) -> None:
    """Step latency vs hidden size per system, log scales (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModelError("--plot needs matplotlib: pip install 'lstm-engine[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(dict.fromkeys(n for r in results for n in r["step"]))
    for name in names:
        pts = [(r["hidden"], r["step"][name]["median_us"]) for r in results if name in r["step"]]
        ax.plot(*zip(*pts), marker="o", label=name)
    pts = [(r["hidden"], r["blas_gemv"]["median_us"]) for r in results if r["blas_gemv"]]
    if pts:
        ax.plot(*zip(*pts), linestyle="--", color="gray", label="numpy BLAS (bare product)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden size H (I = H)")
    ax.set_ylabel("step latency, median µs")
    ax.set_title("batch-1 LSTM step, 1 thread")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
