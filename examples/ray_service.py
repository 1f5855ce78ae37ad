"""The example WebSocket service (ws_service.py) on Ray Serve: replicas that each hold one
Engine and one Batcher, whose streams checkpoint to Redis and resume on any replica (see
ray_serve.md here).

    redis-server --port 6379 --save '' &
    python examples/ray_service.py --hidden 128 --port 8000 --redis redis://127.0.0.1:6379/0
"""
import argparse
import gc
import os
import signal
import sys

import ray
from fastapi import FastAPI, WebSocket
from ray import serve

# examples/ on sys.path: `python examples/ray_service.py` puts it there, and Ray hands the
# driver script's directory on to its workers, which import ws_service when they unpickle
# the deployment
import ws_service
from lstm_engine.serving import Batcher, RedisStore

STREAMS_PER_REPLICA = 1000  # Serve counts an open WebSocket as an ongoing request for its whole
#                             life, and its default of 5 per replica would queue the 6th stream

app = FastAPI()


@serve.deployment(
    num_replicas=2,
    max_ongoing_requests=STREAMS_PER_REPLICA,
    # Ray's scheduler counts a replica as half a CPU: two replicas on a 2-core machine
    # leave room for a replacement to start while a dead one is cleaned up (on a cluster:
    # ray_serve.md). numba's pool is capped at one thread (an Engine uses at most
    # NUMBA_NUM_THREADS), so replicas sharing a node never oversubscribe its cores.
    ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": {"NUMBA_NUM_THREADS": "1"}}},
)
@serve.ingress(app)
class StreamService:
    """One replica: `model` (a path every node can read) or a random model of `hidden`
    units (seeded, so every replica, restarted ones too, has the same weights); its
    streams checkpoint every `checkpoint_every` frames to the Redis at `redis_url`, under
    keys starting with `prefix`. Other options go to its Batcher."""

    def __init__(self, redis_url: str, model: str | None = None, hidden: int = 128, checkpoint_every: int = 25,
                 prefix: str = "lstm:", **batcher_options):
        import lstm_engine
        from lstm_engine.bench import default_model

        engine = lstm_engine.Engine(lstm_engine.load(model) if model else default_model(hidden))
        self.store = RedisStore(redis_url, prefix=prefix)
        self.batcher = Batcher(engine, store=self.store, checkpoint_every=checkpoint_every,
                               max_streams=STREAMS_PER_REPLICA, **batcher_options)
        # the replica's id is also its Ray actor's name (namespace "serve"): the hello
        # tells a client, or an operator, which replica holds a stream
        self.worker = serve.get_replica_context().replica_id.to_full_id_str()
        self.live = {}  # open connections by stream id (ws_service's take-over rule)
        # as ws_service.main() does, for the same reasons: keep full garbage collections
        # off the ~10^5 start-up objects, and hand the GIL to the batch thread promptly
        gc.freeze()
        sys.setswitchinterval(0.0005)

    @app.websocket("/stream")
    async def stream(self, ws: WebSocket):
        await ws_service.serve_connection(ws, self.batcher, self.worker, True, self.live)

    async def __del__(self):
        # Serve's graceful shutdown calls this once no request is open: every connection
        # has released (checkpointed) its stream by then, which happens when the proxy
        # goes (serve.shutdown). A replica stopped while its proxy stays up (a redeploy, a
        # downscale) keeps its WebSockets, which count as open requests, until
        # graceful_shutdown_timeout_s, and is then killed without this call: its streams
        # resume from their latest periodic checkpoints, with replay.
        await self.batcher.aclose()
        await self.store.aclose()


def build_app(args: dict) -> serve.Application:
    """The application, from options as strings (Serve's application builder:
    `serve run ray_service:build_app redis_url=redis://... hidden=128 replicas=2`)."""
    args = dict(args)
    replicas = int(args.pop("replicas", 2))
    for name in ("hidden", "checkpoint_every"):
        if name in args:
            args[name] = int(args[name])
    return StreamService.options(num_replicas=replicas).bind(**args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model file (default: a random one-layer model of --hidden units)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="where the streams' checkpoints go")
    p.add_argument("--checkpoint-every", type=int, default=25, help="frames of a stream between checkpoints")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    args = p.parse_args(argv)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    options = {"redis_url": args.redis, "hidden": args.hidden, "checkpoint_every": args.checkpoint_every,
               "replicas": args.replicas}
    if args.model:
        options["model"] = os.path.abspath(args.model)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped by a service manager: as Ctrl-C
    try:
        serve.run(build_app(options), blocking=True)  # until Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        # the proxy goes first, so every connection ends and its handler checkpoints its
        # stream (release): clients resume where they left off once the service is back
        serve.shutdown()


if __name__ == "__main__":
    main()
