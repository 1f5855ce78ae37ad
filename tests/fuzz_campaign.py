"""Long fuzz campaign over structured mutations of model files (tests/fuzzing.py).

    python tests/fuzz_campaign.py --cases 20000                 # every format, round robin
    python tests/fuzz_campaign.py --cases 5000 --formats onnx --torch-exports
    python tests/fuzz_campaign.py --replay onnx:123             # one case again, in this process

Each case runs in a worker process under an address-space limit (--memory-gb beyond what
the worker holds when it starts) and a time limit (--timeout): a load that raises
anything but ModelError, allocates past the limit (MemoryError, or a native abort),
crashes or hangs is a finding. Findings are grouped by format and first line, each with
the seeds that show it and what their mutation changed; the exit status is 1 when there
are any. --messages N lists the commonest refusals, to spot messages that name a Python
exception rather than what is wrong with the file. Not collected by pytest (the name does
not start with test_).
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import pathlib
import re
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _cases(torch_exports: bool):
    import fuzzing

    cases = fuzzing.Cases()
    if torch_exports:
        cases.onnx.extend(_torch_exports())
    return cases


def _torch_exports() -> list:
    """torch.onnx.export graphs, whose glue (shape arithmetic, ConstantOfShape, Unsqueeze,
    Gather of state) the hand-built bases do not have."""
    from torch_models import Net, export, torch

    torch.manual_seed(0)
    nets = [Net(layers=2, head=5, act="logsoftmax"), Net(layers=1, bidirectional=True, batch_first=True),
            Net(layers=2, vocab=20, head=20, act="softmax"), Net(layers=2, head=3, act="sigmoid", state=False)]
    return [export(net.eval(), net.example(), dynamo=False) for net in nets]


def _worker(conn, memory_gb, torch_exports):
    """Runs cases sent over conn, answering (outcome, how) per case."""
    import fuzzing

    cases = _cases(torch_exports)
    limit = _vm_bytes() + int(memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send("ready")
    while True:
        fmt, seed = conn.recv()
        files, how = cases.make(fmt, seed)
        with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
            conn.send((*fuzzing.outcome(fmt, files, pathlib.Path(folder)), how))


class _Runner:
    """One worker process at a time; replaced after a crash, a hang or a finding."""

    def __init__(self, args):
        self.args = args
        self.proc = self.conn = None

    def start(self):
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_worker, daemon=True,
                                                   args=(child, self.args.memory_gb, self.args.torch_exports))
        self.proc.start()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def run(self, fmt, seed):
        """(kind, detail, mutation description): kind as fuzzing.outcome's, or "escaped"
        for a crash or a hang."""
        if self.proc is None:
            self.start()
        self.conn.send((fmt, seed))
        if self.conn.poll(self.args.timeout):
            try:
                return self.conn.recv()
            except EOFError:  # the worker died
                self.proc.join()
                code = self.proc.exitcode
                self.stop()
                return "escaped", f"crash (exit code {code})", []
        self.stop()
        return "escaped", f"hang (more than {self.args.timeout} s)", []

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None


def campaign(args) -> int:
    import fuzzing

    formats = args.formats.split(",") if args.formats else list(fuzzing.FORMATS)
    runner = _Runner(args)
    found = collections.defaultdict(list)
    counts, kinds, messages = collections.Counter(), collections.Counter(), collections.Counter()
    t0 = time.time()
    try:
        for i in range(args.cases):
            fmt, seed = formats[i % len(formats)], args.seed + i // len(formats)
            kind, detail, how = runner.run(fmt, seed)
            counts[fmt] += 1
            kinds[kind] += 1
            if kind == "escaped":
                found[(fmt, detail.splitlines()[0][:160])].append((seed, how))
            elif kind == "refused":
                messages[(fmt, _shape_of(detail))] += 1
            if args.progress and (i + 1) % args.progress == 0:
                print(f"{i + 1} cases, {len(found)} distinct findings, {time.time() - t0:.0f} s", flush=True)
    finally:
        runner.stop()
    print(f"{sum(counts.values())} cases ({dict(counts)}) in {time.time() - t0:.0f} s: {dict(kinds)}; "
          f"{len(found)} distinct findings")
    if args.messages:
        print(f"\nthe {args.messages} most common refusals (names and numbers elided):")
        for (fmt, shape), n in messages.most_common(args.messages):
            print(f"{n:7d} [{fmt}] {shape}")
    for (fmt, what), hits in sorted(found.items()):
        print(f"\n[{fmt}] {what}\n  {len(hits)} case(s), e.g. --replay {fmt}:{hits[0][0]}: {hits[0][1]}")
    return 1 if found else 0


def _shape_of(message: str) -> str:
    """A refusal's message without the names and numbers that vary from case to case."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'.'", message))[:150]


def replay(spec, torch_exports) -> int:
    """One case in this process, so that its traceback shows."""
    import fuzzing
    import lstm_engine as le

    fmt, seed = spec.split(":")
    files, how = _cases(torch_exports).make(fmt, int(seed))
    print("mutation:", how)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-"))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    print("files kept in", folder)
    try:
        le.Engine(fuzzing.load(fmt, folder / next(iter(files))))
        print("loaded")
    except le.ModelError as e:
        print("ModelError:", e)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--formats", default="", help="comma-separated, of: onnx, onnx-external, native, "
                                                  "checkpoint, checkpoint-restricted, safetensors (default: all)")
    p.add_argument("--seed", type=int, default=0, help="first seed of each format")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    p.add_argument("--memory-gb", type=float, default=2.0, help="address space a case may add")
    p.add_argument("--torch-exports", action="store_true", help="also mutate torch.onnx.export graphs")
    p.add_argument("--progress", type=int, default=0, help="print a line every this many cases")
    p.add_argument("--messages", type=int, default=0, help="list this many of the most common refusals, "
                                                           "to spot unhelpful messages")
    p.add_argument("--replay", help="format:seed -- run one case here and show what happens")
    args = p.parse_args(argv)
    return replay(args.replay, args.torch_exports) if args.replay else campaign(args)


if __name__ == "__main__":
    sys.exit(main())
