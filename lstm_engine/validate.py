"""`lstm-engine validate`: the engine on a converted ONNX model vs onnxruntime on the
original file, offline and streamed frame by frame, with the same inputs."""
from __future__ import annotations

import numpy as np
import onnx

from . import reference
from .engine import Engine
from .errors import ModelError


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def random_inputs(proto, model, io, steps=100, batch=2, seed=0) -> dict:
    """Inputs shaped from the graph: static dims as declared, time = steps, batch = batch."""
    rng = np.random.default_rng(seed)
    if io.fixed_lengths:  # the graph's constant sequence_lens fix the batch and bound time
        batch, steps = len(io.fixed_lengths), max(steps, *io.fixed_lengths)
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    T = B = None
    for vi in proto.graph.input:
        if vi.name != io.x:
            continue
        dims = _dims(vi)
        t_ax, b_ax = (1, 0) if io.layout == 1 else (0, 1)
        T = dims[t_ax] or steps
        B = (dims[b_ax] or batch) if io.batched else None
        shape = [T, B] if io.layout == 0 else [B, T]
        shape = [s for s in shape if s is not None]
        if model.embedding is not None:
            feeds[vi.name] = rng.integers(0, model.embedding.vocab_size, shape).astype(
                np.int32 if vi.type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64)
        else:
            feeds[vi.name] = rng.uniform(-1, 1, shape + [model.layers[0].input_size]).astype(np.float32)
    sizes = model.state_sizes
    for runs, k in ((io.h0, 0), (io.c0, 1)):
        for name, first, n in runs:
            size = sizes[first][k]
            shape = {"S": n, "B": B or 1, "P": size}
            feeds[name] = rng.uniform(-0.5, 0.5, [shape[a] for a in io.state_axes]).astype(np.float32)
    if io.lengths:
        feeds[io.lengths] = np.full(B or 1, T, np.int32)
    missing = [vi.name for vi in proto.graph.input if vi.name not in feeds and vi.name not in inits]
    if missing:
        raise ModelError(f"cannot make inputs for graph input(s) {missing}; give them with --inputs FILE.npz")
    return feeds


def _declared(proto, feeds) -> dict:
    """feeds cast to the element types the graph declares: an .npz of float64 frames is
    what NumPy writes by default, and onnxruntime refuses any type but the declared one."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.input}
    out = {}
    for name, v in feeds.items():
        if name not in types:
            raise ModelError(f"input {name!r} is not a graph input (inputs: {list(types)})")
        v = np.asarray(v)
        if not types[name]:  # the graph leaves the type open
            out[name] = v
            continue
        want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types[name]))
        if (v.dtype.kind in "iu") != (want.kind in "iu") or v.dtype.kind not in "iuf":
            raise ModelError(f"input {name!r} holds {v.dtype}; the graph declares {want}")
        out[name] = v.astype(want, copy=False)
    return out


def _session(proto):
    """(onnxruntime session on proto, its version), or (None, why onnxruntime cannot load it).
    proto: from load_proto, so external data is already inside, read with its checks."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    p.ir_version = min(p.ir_version, 10)  # onnxruntime reads IR <= 10 reliably
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"]), ort.__version__
    except Exception as e:  # refuses the graph (layout=1, ...)
        return None, str(e).splitlines()[0][:160]


def _reference_outputs(proto, feeds, model, io):
    """(outputs, reference name, why onnxruntime was not the reference or None).
    onnxruntime on the original graph; only when it cannot load the graph, the float64
    NumPy reference on the converted model. A graph onnxruntime loads but cannot run on
    these inputs is an error: falling back then would hide a wrong input."""
    sess, why = _session(proto)
    if sess is not None:
        try:
            out = sess.run(None, feeds)
        except Exception as e:
            raise ModelError(f"onnxruntime cannot run the graph on these inputs: {str(e).splitlines()[0][:300]}") from None
        return dict(zip([o.name for o in proto.graph.output], out)), f"onnxruntime {why} on the original graph", None
    try:
        return _numpy_reference(model, io, feeds), f"lstm-engine's float64 reference, NOT onnxruntime (onnxruntime: {why})", why
    except Exception as e:  # inputs the converted model cannot take either
        raise ModelError(f"no reference to compare with: onnxruntime cannot load the graph ({why}) and "
                         f"lstm-engine's float64 reference cannot run these inputs ({type(e).__name__}: {e})") from None


def _numpy_reference(model, io, feeds) -> dict:
    """reference.run, which takes batches: an unbatched input runs as a batch of one."""
    X, state, lengths = io.engine_args(feeds, model)
    h0, c0 = (None, None) if state is None else state
    lone = 1 - model.layout  # the batch axis reference.run expects
    if not io.batched:
        X = np.expand_dims(X, lone)
        h0, c0 = ([np.asarray(a)[None] for a in cells] if cells is not None else None for cells in (h0, c0))
    Y, (h, c) = reference.run(model, X, h0, c0, lengths)
    if not io.batched:
        Y, h, c = Y.squeeze(lone), [a[0] for a in h], [a[0] for a in c]
    return io.graph_outputs(Y, (h, c), model)


def _streamed(engine, model, X, state, batched):
    """Frame by frame through one Stream per sequence; results shaped like Engine.run's."""
    seqs = X if not batched else (X if model.layout == 1 else np.swapaxes(X, 0, 1))
    seqs = [seqs] if not batched else list(seqs)
    Ys, hs, cs = [], [], []
    for b, seq in enumerate(seqs):
        st = None
        if state is not None:
            st = tuple([a if not batched else a[b] for a in part] for part in state)
        s = engine.open_stream(state=st)
        Ys.append(np.stack([s.step(x) for x in seq]))
        h, c = s.state
        hs.append(h)
        cs.append(c)
    if not batched:
        return Ys[0], (hs[0], cs[0])
    Y = np.stack(Ys, axis=0 if model.layout == 1 else 1)
    ncell = len(hs[0])
    return Y, ([np.stack([h[k] for h in hs]) for k in range(ncell)], [np.stack([c[k] for c in cs]) for k in range(ncell)])


# default tolerances on max abs error: DESIGN's fp32 bar; for bf16 and int8 about what
# rounding the weights did to a trained model's log-probabilities (README, Precision)
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "int8": 2e-1, "int8-dynamic": 3e-1}


def validate(src, inputs=None, steps=100, tol=None, batch=2, seed=0, precision="fp32") -> dict:
    """Compare; returns a JSON-ready dict with per-output errors and an overall pass.
    precision: the engine's (the reference stays onnxruntime's fp32); tol None takes
    TOLERANCES[precision]."""
    from converters.onnx_files import load_proto
    from converters.onnx_import import import_proto

    if precision not in TOLERANCES:
        raise ValueError(f"precision {precision!r} is not available; choose from {tuple(TOLERANCES)}")
    tol = TOLERANCES[precision] if tol is None else tol
    proto = load_proto(src)  # parsed once: onnxruntime and the converter share it
    model, io = import_proto(proto)
    feeds = _declared(proto, inputs if inputs is not None else random_inputs(proto, model, io, steps, batch, seed))
    ref, ref_name, fallback = _reference_outputs(proto, feeds, model, io)
    engine = Engine(model, precision=precision)
    X, state, lengths = io.engine_args(feeds, model)
    runs = {"offline": engine.run(X, state, lengths)}
    full = lengths is None or bool(np.all(np.asarray(lengths) == (X.shape[1] if model.layout == 1 else X.shape[0])))
    if model.streamable and full:
        runs["stream"] = _streamed(engine, model, X, state, io.batched)
    rows = []
    for mode, (Y, st) in runs.items():
        got = io.graph_outputs(Y, st, model)
        for name, want in ref.items():
            if name not in got:
                continue
            a, b = np.asarray(got[name], np.float64), np.asarray(want, np.float64)
            if a.shape != b.shape:
                rows.append({"output": name, "mode": mode, "max_abs": None, "max_rel": None, "pass": False,
                             "note": f"shape {a.shape} vs {b.shape}"})
                continue
            err = np.abs(a - b)
            max_abs = float(err.max()) if err.size else 0.0
            max_rel = float((err / np.maximum(np.abs(b), 1e-6)).max()) if err.size else 0.0
            rows.append({"output": name, "mode": mode, "max_abs": max_abs, "max_rel": max_rel,
                         "pass": bool(max_abs <= tol)})
    shape = {k: list(np.shape(v)) for k, v in feeds.items()}
    return {"model": "<ModelProto>" if isinstance(src, onnx.ModelProto) else str(src), "reference": ref_name,
            "fallback": fallback, "precision": precision, "tol": tol, "inputs": shape,
            "streamed": "stream" in runs, "unchecked_outputs": [n for n in ref if not any(r["output"] == n for r in rows)],
            "results": rows, "pass": bool(rows) and all(r["pass"] for r in rows)}
