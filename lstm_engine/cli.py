"""`lstm-engine` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _bench(args) -> int:
    from . import bench

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    info = bench.machine_info()
    results = []
    for H in args.hidden:
        progress(f"benchmarking H={H} ...")
        model = bench.default_model(H, args.input, args.layers)
        results.append(bench.measure(model, steps=args.steps, chunk=args.chunk, progress=progress))
    print(bench.report(results, info))
    if args.json:
        from . import __version__

        with open(args.json, "w") as f:
            json.dump({"machine_info": info, "benchmarks": results,
                       "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__}, f, indent=1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lstm-engine", description="Fast batch-1 LSTM inference on the CPU")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time lstm-engine against onnxruntime on this machine")
    b.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024], help="hidden sizes (default 64 256 1024)")
    b.add_argument("--input", type=int, default=None, help="input size (default: equal to hidden)")
    b.add_argument("--layers", type=int, default=1)
    b.add_argument("--steps", type=int, default=2000, help="timed steps per system and size")
    b.add_argument("--chunk", type=int, default=100, help="frames per chunked run")
    b.add_argument("--json", help="also write the results as JSON to this file")
    b.set_defaults(func=_bench)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
