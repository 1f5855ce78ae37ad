"""Memory per open stream: 10 000 streams of an H=256 model, opened through a Batcher
and as bare Streams, against the bytes each stream's state and scratch need.

    python benchmarks/stream_memory.py [--hidden 256] [--streams 10000]

Resident memory is read from /proc/self/statm (Linux) before and after opening.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os

import lstm_engine
from lstm_engine.bench import default_model
from lstm_engine.serving import Batcher


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def through_batcher(engine, n):
    b = Batcher(engine, max_streams=n)
    for k in range(n):
        await b.open(k)
    return b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--streams", type=int, default=10_000)
    args = p.parse_args(argv)
    engine = lstm_engine.Engine(default_model(args.hidden))
    n = args.streams
    need = 4 * engine._packed.stream_len  # state (h, c) and the scratch a step writes, in floats
    state = 4 * engine._packed.state_len

    # both kept alive, so neither reuses memory the other freed
    before = rss()
    loop = asyncio.new_event_loop()
    batcher = loop.run_until_complete(through_batcher(engine, n))
    served = (rss() - before) / n
    before = rss()
    streams = [engine.open_stream() for _ in range(n)]
    bare = (rss() - before) / len(streams)
    print(f"H={args.hidden}: state {state} B, state + scratch {need} B per stream")
    print(f"{n} bare Streams: {bare:.0f} B each ({bare / need:.2f}x state + scratch)")
    print(f"{len(batcher)} streams in a Batcher: {served:.0f} B each ({served / need:.2f}x state + scratch)")
    loop.run_until_complete(batcher.aclose())


if __name__ == "__main__":
    main()
