"""`lstm-engine` command line: bench, validate, convert, info, loadtest.

Errors print one line on stderr and exit 2 (the traceback with --debug);
validate exits 1 when the outputs disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other error here
        self.exit(EXIT_ERROR, f"lstm-engine: error: {message} (see lstm-engine --help)\n")


_said = set()


def _progress(msg):
    if "skipped" in msg:  # the same peer is skipped for every size: say it once
        if msg in _said:
            return
        _said.add(msg)
    print(msg, file=sys.stderr, flush=True)


def _load_any(path, args=None):
    """Any supported model file; converter options come from the command line."""
    import lstm_engine

    if not os.path.exists(path):
        raise lstm_engine.ModelError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if args is not None and suffix == ".onnx" and getattr(args, "select", None):
        from converters import from_onnx

        return from_onnx(path, select=args.select)
    if args is not None and suffix in (".pt", ".pth", ".safetensors") and any(
            getattr(args, k, None) for k in ("prefix", "head", "embedding", "head_activation", "batch_first")):
        from converters import from_torch

        return from_torch(path, prefix=args.prefix, head=args.head, embedding=args.embedding,
                          head_activation=args.head_activation, batch_first=args.batch_first)
    return lstm_engine.load(path)


# ---- bench -------------------------------------------------------------------------
def _bench(args) -> int:
    from . import __version__, bench

    against = [a.strip() for a in args.against.split(",") if a.strip()]
    bad = [a for a in against if a not in bench.PEERS]
    if bad:
        raise ValueError(f"--against: unknown peer(s) {bad}; choose from {','.join(bench.PEERS)}")
    info = bench.machine_info()
    if args.model:
        models = [(args.model, _load_any(args.model))]
    else:
        models = [(f"H={H}", bench.default_model(H, args.input, args.layers)) for H in args.hidden]
    results = []
    for label, model in models:
        _progress(f"benchmarking {label} ...")
        r = bench.measure(model, steps=args.steps, chunk=args.chunk, against=against,
                          precision=args.precision, threads=args.threads, progress=_progress,
                          streams=args.streams)
        if args.model:
            r["name"] = "model"
        results.append(r)
    print(bench.report(results, info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine_info": info, "benchmarks": results,
                       "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__}, f, indent=1)
    if args.plot:
        bench.plot(results, args.plot)
    return EXIT_OK


# ---- validate ------------------------------------------------------------------------
def _validate(args) -> int:
    import numpy as np

    from .validate import validate

    inputs = None
    if args.inputs:
        with np.load(args.inputs) as z:
            inputs = {k: z[k] for k in z.files}
    res = validate(args.model, inputs=inputs, steps=args.steps, tol=args.tol, precision=args.precision)
    print(f"model: {args.model}")
    print(f"reference: {res['reference']}; lstm-engine in {res['precision']}")
    print("inputs: " + ", ".join(f"{k} {tuple(v)}" for k, v in res["inputs"].items())
          + ("" if args.inputs else " (random, seed 0)"))
    print(f"{'output':<20} {'mode':<8} {'max abs':>10} {'max rel':>10}  result")
    for r in res["results"]:
        fmt = (lambda v: f"{v:10.2e}" if v is not None else f"{'-':>10}")
        print(f"{r['output']:<20} {r['mode']:<8} {fmt(r['max_abs'])} {fmt(r['max_rel'])}  "
              f"{'PASS' if r['pass'] else 'FAIL'}{'  ' + r['note'] if r.get('note') else ''}")
    if not res["streamed"]:
        print("(not streamed: the model runs in reverse, or the inputs use sequence lengths)")
    if res["unchecked_outputs"]:
        print(f"not compared: {res['unchecked_outputs']} (not mapped onto the engine)")
    against = "" if not res["fallback"] else \
        f" against lstm-engine's own float64 reference, NOT onnxruntime (onnxruntime: {res['fallback']})"
    print(f"{'PASS' if res['pass'] else 'FAIL'}{against} (tolerance {res['tol']:g} on max abs error)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return EXIT_OK if res["pass"] else EXIT_MISMATCH


# ---- convert / info ----------------------------------------------------------------
def _convert(args) -> int:
    model = _load_any(args.input, args)
    suffix = os.path.splitext(args.output)[1].lower()
    if suffix == ".onnx":
        import onnx

        from converters import to_onnx

        onnx.save(to_onnx(model, with_state=True), args.output)
    elif suffix in (".lstm", ""):
        model.save(args.output)
    else:
        raise ValueError(f"{args.output}: write .lstm (native) or .onnx")
    print(f"wrote {args.output} ({_describe(model)})")
    return EXIT_OK


def _describe(model) -> str:
    layers = model.layers
    sizes = "/".join(str(l.hidden_size) for l in layers)
    return f"{len(layers)} layer{'s' if len(layers) > 1 else ''}, H={sizes}, {model.num_parameters():,} parameters"


def info_text(model, path) -> str:
    rows = [f"model: {path}", f"  {_describe(model)}", "layers:",
            f"  {'#':>2} {'direction':<13} {'input':>6} {'hidden':>6} {'proj':>5}  {'activations f, g, h':<34} "
            f"{'clip':>5}  {'input_forget':<12} peepholes"]
    for li, layer in enumerate(model.layers):
        d = layer.directions[0]
        acts = ", ".join(a.name + (f"({a.alpha:g}" + (f", {a.beta:g})" if a.takes[1] else ")") if a.takes[0] else "")
                         for a in d.activations)
        rows.append(f"  {li:>2} {layer.direction:<13} {layer.input_size:>6} {layer.hidden_size:>6} "
                    f"{layer.proj_size if d.proj is not None else '-':>5}  {acts:<34} "
                    f"{layer.clip if layer.clip is not None else '-':>5}  {'yes' if layer.input_forget else 'no':<12} "
                    f"{'yes' if d.peepholes is not None else 'no'}")
    if model.embedding is not None:
        V, E = model.embedding.weight.shape
        rows.append(f"embedding: {V} tokens x {E}")
    if model.head is not None:
        O, K = model.head.weight.shape
        rows.append(f"head: {K} -> {O}{' + bias' if model.head.bias is not None else ''}, "
                    f"activation {model.head.activation or 'none'}")
    rows.append(f"layout: {model.layout} ({'(B, T, I)' if model.layout else '(T, B, I)'} for Engine.run)")
    n = model.num_parameters()
    rows_int8 = sum(a.shape[0] for k, a in model._tensors().items() if a.ndim == 2)
    rows.append(f"parameters: {n:,}; weights fp32 {_bytes(4 * n)}, bf16 {_bytes(2 * n)}, "
                f"int8 {_bytes(n + 4 * rows_int8)} (with per-row scales)")
    if model.streamable:
        rows.append("streaming: yes (Stream.step / Stream.run)")
    else:
        rev = [i for i, l in enumerate(model.layers) if l.direction != "forward"]
        rows.append(f"streaming: no (layers {rev} run in reverse; use Engine.run on whole sequences)")
    return "\n".join(rows)


def _bytes(n) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _info(args) -> int:
    from .bench import cpu_info, kernel_line

    print(info_text(_load_any(args.model, args), args.model))
    print(kernel_line(cpu_info()))  # the code this machine runs the model with
    return EXIT_OK


# ---- loadtest ------------------------------------------------------------------------
def _loadtest(args) -> int:
    import asyncio

    from .serving import loadtest as lt

    lt.check_bounds(args.streams, args.period_ms, args.seconds)
    for url in args.url:  # refused before any connection is made
        lt.loopback_target(url)
    if args.keep is not None and not args.resume:
        raise ValueError("--keep is for resumable streams: add --resume")
    keep = 64 if args.keep is None else args.keep

    def run(n):
        return lt.run_websocket(args.url, n, args.period_ms, args.seconds, resume=args.resume, keep=keep)

    if args.find_max:
        result = asyncio.run(lt.find_max(run, args.streams, progress=_progress))
        print(f"served at most {result['max_streams']} streams with p99 under {args.period_ms:g} ms "
              f"and no frame dropped ({len(result['trials'])} runs of {args.seconds:g} s)")
    else:
        result = asyncio.run(run(args.streams))
        print(lt.summary(result))
    if args.json:
        lt.write_json(args.json, result)
    return EXIT_OK


def _add_converter_options(p):
    g = p.add_argument_group("converter options")
    g.add_argument("--select", choices=["lstm"], help="ONNX: keep only the LSTM stack")
    g.add_argument("--prefix", help="PyTorch: module prefix of the nn.LSTM")
    g.add_argument("--head", help="PyTorch: prefix of an nn.Linear on top")
    g.add_argument("--embedding", help="PyTorch: prefix of an nn.Embedding in front")
    g.add_argument("--head-activation", choices=["Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Relu"])
    g.add_argument("--batch-first", action="store_true", help="PyTorch: the nn.LSTM was batch_first")


def _whole(minimum):
    """argparse type: a whole number >= minimum; anything else is argparse's one-line error
    (a size of 0 would otherwise fail deep inside NumPy with a message about arrays)."""
    def whole_number(text):
        n = int(text)
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {n}")
        return n
    return whole_number


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lstm-engine", description="Fast batch-1 LSTM inference on the CPU")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("bench", help="time lstm-engine against its peers on this machine")
    b.add_argument("--hidden", type=_whole(1), nargs="+", default=[64, 256, 1024], help="hidden sizes (default 64 256 1024)")
    b.add_argument("--input", type=_whole(1), default=None, help="input size (default: equal to hidden)")
    b.add_argument("--layers", type=_whole(1), default=1)
    b.add_argument("--steps", type=_whole(1), default=2000, help="timed steps per system and size")
    b.add_argument("--chunk", type=_whole(1), default=100, help="frames per chunked run (T)")
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "int8-dynamic"])
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--streams", type=_whole(0), default=0, metavar="N",
                   help="also time one frame for each of N streams per call (Engine.step_many vs batch N)")
    b.add_argument("--model", help="bench this model file instead of the default sizes")
    b.add_argument("--against", default="ort,torch,openvino", help="peers, comma-separated (ort,torch,openvino)")
    b.add_argument("--json", help="write results as JSON (pytest-benchmark style keys)")
    b.add_argument("--plot", help="write a PNG of latency vs hidden size (needs matplotlib)")
    b.set_defaults(func=_bench)

    v = sub.add_parser("validate", help="check an ONNX model against onnxruntime")
    v.add_argument("model")
    v.add_argument("--inputs", help=".npz keyed by graph input names (default: random, shaped from the graph)")
    v.add_argument("--steps", type=_whole(1), default=100, help="time steps of random inputs")
    v.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "int8-dynamic"],
                   help="the engine's weights (the reference stays fp32): how much does bf16 / int8 move my model?")
    v.add_argument("--tol", type=float, default=None,
                   help="largest max-abs error that passes (default 1e-4; bf16 5e-2; int8 2e-1)")
    v.add_argument("--json", help="write the comparison as JSON")
    v.set_defaults(func=_validate)

    c = sub.add_parser("convert", help="ONNX / .pt / .safetensors -> native .lstm; native -> .onnx")
    c.add_argument("input")
    c.add_argument("output")
    _add_converter_options(c)
    c.set_defaults(func=_convert)

    i = sub.add_parser("info", help="layers, sizes, options and weight bytes of a model")
    i.add_argument("model")
    _add_converter_options(i)
    i.set_defaults(func=_info)

    t = sub.add_parser("loadtest", help="drive a WebSocket service (examples/ws_service.py) with N open-loop "
                                        "real-time streams over loopback")
    t.add_argument("url", nargs="+", help="ws:// URL on a loopback address, e.g. ws://127.0.0.1:8000/stream; "
                                          "several: workers, the streams spread over them round robin")
    t.add_argument("--streams", type=int, default=100, help="concurrent streams, one connection each "
                                                             "(the first guess with --find-max)")
    t.add_argument("--period-ms", type=float, default=10.0, help="frame period of every stream")
    t.add_argument("--seconds", type=float, default=10.0, help="length of one run")
    t.add_argument("--find-max", action="store_true",
                   help="search for the most streams served with p99 under the period and no frame dropped")
    t.add_argument("--resume", action="store_true",
                   help="named streams that resume after a lost connection on the next URL, replaying "
                        "their kept frames (the example service's resume protocol); reports recoveries, "
                        "lost outputs and replays that answered differently")
    t.add_argument("--keep", type=_whole(1), default=None,
                   help="frames each resumable stream keeps for a replay (at least twice the service's "
                        "checkpoint interval plus its max_pending; default 64)")
    t.add_argument("--json", help="write the report (every run's, with --find-max) as JSON")
    t.set_defaults(func=_loadtest)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"lstm-engine: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
