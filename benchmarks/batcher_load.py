"""The Batcher in-process under open-loop real-time load: how many streams it serves.

    python benchmarks/batcher_load.py --hidden 128 --streams 2000 --seconds 20
    python benchmarks/batcher_load.py --hidden 128 --streams 500 --find-max --seconds 10
    python benchmarks/batcher_load.py --streams 1000 --redis redis://127.0.0.1:6379/0 --checkpoint-every 25
    taskset -c 0 python benchmarks/batcher_load.py ...      # one core for everything

The generator is the one `lstm-engine loadtest` uses (an absolute schedule; latency
from each frame's scheduled time), calling Batcher.step directly instead of sending
over a socket. Generator, event loop and the batch's worker thread share the process.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import pathlib
import sys
import time
import uuid

import numpy as np

import lstm_engine
from lstm_engine.bench import cpu_info, default_model
from lstm_engine.serving import Batcher, Overloaded, RedisStore
from lstm_engine.serving import loadtest as lt


class Echo:
    """Answers every frame at once with its input: the generator's and the callers' own
    cost (--backend none), to subtract from a Batcher's."""

    def __init__(self, engine, **options):
        self._loop = asyncio.get_running_loop()

    def step(self, key, x, seq=None):
        fut = self._loop.create_future()
        fut.set_result(x)
        return fut

    def stats(self):
        return {}

    async def aclose(self):
        pass


async def run_batcher(engine, streams: int, period_ms: float, seconds: float, serve=Batcher, redis=None,
                      **options) -> dict:
    lt.check_bounds(streams, period_ms, seconds)
    period = period_ms / 1e3
    tally = lt.Tally(streams, period, max(1, round(seconds / period)))
    frames = np.random.default_rng(0).standard_normal((streams, engine.model.input_size)).astype(np.float32)
    store = None
    if redis is not None:  # keys of their own for every run: each starts at zero state
        store = RedisStore(redis, prefix=f"bench:{uuid.uuid4().hex}:")
        options["store"] = store
        redis_cpu = _redis_cpu(redis)
    b = serve(engine, **options)

    def sent(i, k, fut):
        if fut.cancelled() or fut.exception() is not None:
            tally.refused += 1
        else:
            tally.answered(i, k)

    def send(i, k):
        try:
            b.step(i, frames[i], seq=k).add_done_callback(lambda fut: sent(i, k, fut))
        except Overloaded:
            tally.refused += 1

    cpu = time.process_time()
    await lt.open_loop(tally, send)
    cpu = time.process_time() - cpu
    report = tally.report()
    report["batcher"] = b.stats()
    # all threads' CPU time (generator included) per answered frame: what one core
    # could carry, whatever else shares the machine
    report["cpu_us_per_frame"] = cpu / max(1, report["answered"]) * 1e6
    if store is not None:  # and the server's, which a service pays for too
        report["redis_cpu_us_per_frame"] = (_redis_cpu(redis) - redis_cpu) / max(1, report["answered"]) * 1e6
        # ends the streams, deleting their keys (a stream refused at its opening is not open)
        await asyncio.gather(*[b.close(i) for i in range(streams)], return_exceptions=True)
    await b.aclose()
    if store is not None:
        await store.aclose()
    return report


def _redis_cpu(url) -> float:
    """CPU seconds the Redis server at `url` has used (INFO cpu)."""
    import redis

    with redis.Redis.from_url(url) as r:
        info = r.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--period-ms", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--backend", default="lstm-engine", choices=["lstm-engine", "ort", "none"],
                   help="ort: onnxruntime batch-N with numpy state (benchmarks/ort_service.py); "
                        "none: no Batcher, every frame answered at once (the generator's own cost)")
    p.add_argument("--switch-ms", type=float, default=0.5,
                   help="sys.setswitchinterval, as the example service sets it (Python's default: 5)")
    p.add_argument("--redis", metavar="URL", help="checkpoint streams to this Redis (RedisStore)")
    p.add_argument("--checkpoint-every", type=int, default=25, help="frames per checkpoint, with --redis")
    p.add_argument("--find-max", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    model = default_model(args.hidden)
    if args.backend == "ort":
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from ort_service import OrtEngine

        engine = OrtEngine(model)
    else:
        engine = lstm_engine.Engine(model, precision=args.precision)
    gc.freeze()  # what a service does after start-up (examples/ws_service.py)
    sys.setswitchinterval(args.switch_ms / 1e3)
    options = dict(max_wait_ms=args.max_wait_ms, max_batch=args.max_batch)
    if args.backend == "none":
        options = {"serve": Echo}
    elif args.redis:
        options.update(redis=args.redis, checkpoint_every=args.checkpoint_every)

    def run(n):
        return run_batcher(engine, n, args.period_ms, args.seconds, **dict(options))

    print(f"Batcher in-process on {args.backend}, H={args.hidden} {args.precision}, {cpu_info()['cpu']}",
          file=sys.stderr)
    if args.find_max:
        result = asyncio.run(lt.find_max(run, args.streams))
        print(f"served at most {result['max_streams']} streams")
    else:
        result = asyncio.run(run(args.streams))
        print(lt.summary(result))
        print(f"CPU per frame {result['cpu_us_per_frame']:.2f} µs (all threads)"
              + (f", Redis server {result['redis_cpu_us_per_frame']:.2f} µs" if args.redis else "")
              + f"; batcher {json.dumps(result['batcher'])}")
    if args.json:
        lt.write_json(args.json, result)


if __name__ == "__main__":
    main()
