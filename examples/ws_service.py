"""A streaming LSTM service: one WebSocket connection is one stream (see README.md here).

Binary frames both ways (`lstm_engine.serving.wire`): an 8-byte little-endian sequence
number, then float32 values -- a frame in, its output out under the same number. A
frame the service refuses gets a text message {"seq": n, "error": "..."} instead and
leaves the stream as it was. The first message of every connection is a text hello
{"worker": ..., "stream": ..., "resume_seq": ...}. A client closing with code 1000
ends its stream; with --redis, any other end of a named stream (?id=...) checkpoints
it, and the client resumes it on any worker sharing that Redis (README.md: Resume).

    python examples/ws_service.py --hidden 128 --port 8000          # a random H=128 model
    python examples/ws_service.py --model net.lstm --port 8000 --redis redis://127.0.0.1:6379/0
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from lstm_engine.serving import Batcher, Moved, Overloaded, wire

STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SEQ = re.compile(r"[0-9]{1,20}")  # a decimal uint64 (checked against 2**64 too)
END = 1000  # the client's close code that ends its stream
TAKEN_OVER = 4000  # sent to a connection whose stream id a newer connection claimed
MOVED = 4001  # sent when another worker owns the stream now: reconnect and resume


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create_app(engine, store=None, worker=None, **batcher_options) -> FastAPI:
    """The service around a Batcher of `engine` (options: Batcher's, checkpoint_every
    among them). store: a `RedisStore` (streams resume across workers; the app closes
    it at shutdown), or None. worker: the name hellos carry (default hostname:pid)."""
    worker = worker or default_worker()
    # Without a store, streams idle past the batcher's idle_timeout_s are evicted, their
    # snapshots kept here until their connection sends again or closes: a silent client
    # resumes exactly. With one, the batcher checkpoints them to the store instead.
    parked = None if store is not None else {}
    batcher = Batcher(engine, store=store, on_evict=None if parked is None else parked.__setitem__,
                      **batcher_options)
    live = {}  # stream id -> its open connection on this worker

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.aclose()  # with a store: checkpoints every changed stream (hand-over)
        if store is not None:
            await store.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.batcher = batcher
    app.state.live = live

    @app.get("/stats")
    async def stats():
        """The batcher's counters (frames, checkpoints, store writes and errors, moved)."""
        return {"worker": worker, "connections": len(live), **batcher.stats()}

    @app.websocket("/stream")
    async def stream(ws: WebSocket):
        await serve_connection(ws, batcher, worker, store is not None, live, parked)

    return app


class _Connection:
    """A connection of a named stream, for the take-over rule: `left` is set once its
    handler has let go of the stream (released or closed it)."""

    __slots__ = ("left", "ws")

    def __init__(self, ws):
        self.ws = ws
        self.left = asyncio.Event()


async def serve_connection(ws: WebSocket, batcher: Batcher, worker: str, has_store: bool, live: dict,
                           parked: dict | None = None) -> None:
    """Serve one WebSocket of /stream until it ends (the resume protocol: README.md).

    batcher: shared by every connection of this worker; has_store: whether it has a
    store (named streams are then released, not closed, when a connection ends other
    than by the client's close 1000); live: stream id -> connection, shared by every
    connection of this worker; parked: where the batcher's on_evict puts snapshots
    (no store only; None: an evicted stream starts over)."""
    sid = ws.query_params.get("id")
    received = ws.query_params.get("received")
    if (sid is not None and not STREAM_ID.fullmatch(sid)) or (
            received is not None and not (SEQ.fullmatch(received) and int(received) < 1 << 64)):
        await ws.close(code=1008)  # before accept: uvicorn answers the upgrade with HTTP 403
        return
    model = batcher.engine.model
    await ws.accept(headers=[(b"x-input-size", str(model.input_size).encode()),
                             (b"x-output-size", str(model.output_size).encode())])
    # A named stream's key is its id (a str); an anonymous one's is random bytes, unique
    # across workers (RedisStore keeps str and bytes keys apart), which nobody can name
    # to resume, so it is closed, never released, whatever ends its connection
    key = sid if sid is not None else os.urandom(16)
    me = None
    end = None  # the close code that ended the connection
    try:
        if sid is not None:
            while (old := live.get(sid)) is not None:  # take-over: one connection per stream here
                await _close(old.ws, TAKEN_OVER)  # its handler hears a disconnect and lets go
                await old.left.wait()
            live[sid] = me = _Connection(ws)
        resume = None
        if sid is not None and has_store:
            try:
                resume = await batcher.resume_seq(sid, None if received is None else int(received))
            except Overloaded:
                end = 1013  # try again later (max_streams)
            except Exception:  # the store is unreachable, or the worker stops: it cannot claim the stream
                end = 1011
            if end is not None:
                await _close(ws, end)
                return
        await _send(ws, json.dumps({"worker": worker, "stream": sid, "resume_seq": resume}))
        end = await _frames(ws, batcher, key, parked)
    except WebSocketDisconnect as e:  # a send found the connection gone
        end = e.code
    finally:
        if parked is not None:
            parked.pop(key, None)
        try:
            if has_store and sid is not None and end != END:
                await batcher.release(key)  # a checkpoint: the client may resume anywhere
            else:
                await batcher.close(key)  # the stream has ended (its key deleted from the store)
        except KeyError:  # it never opened (no frame, no resume)
            pass
        finally:  # whatever happened, a connection taking the stream over must not wait forever
            if me is not None:
                if live.get(sid) is me:
                    del live[sid]
                me.left.set()


async def _frames(ws, batcher, key, parked):
    """Answer frames until the connection ends; returns its close code."""
    while True:
        msg = await ws.receive()
        data = msg.get("bytes")
        if data is None:
            if msg["type"] == "websocket.disconnect":
                return msg.get("code", 1005)
            await _send(ws, json.dumps({"seq": None, "error": "send binary frames"}))
            continue
        seq = None
        try:
            seq, x = wire.decode(data)
            if parked is not None and key in parked:
                await batcher.open(key, state=parked.pop(key))
            y = await batcher.step(key, x, seq=seq)
        except Moved:
            await _close(ws, MOVED)
            return MOVED
        except (ValueError, Overloaded) as e:
            await _send(ws, json.dumps({"seq": seq, "error": str(e)}))
            continue
        await _send(ws, wire.encode(seq, y))


async def _send(ws, message):
    """Send unless the connection was closed meanwhile (a take-over closes it from
    another handler); the next receive then reports the disconnect."""
    if ws.application_state is WebSocketState.CONNECTED:
        await (ws.send_bytes if isinstance(message, bytes) else ws.send_text)(message)


async def _close(ws, code):
    if ws.application_state is WebSocketState.CONNECTED:
        try:
            await ws.close(code=code)
        except WebSocketDisconnect:  # the transport went first
            pass


def main(argv=None):
    import gc

    import uvicorn

    import lstm_engine
    from lstm_engine.bench import default_model
    from lstm_engine.serving import RedisStore

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model file (default: a random one-layer model of --hidden units)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis", metavar="URL", help="checkpoint named streams to this Redis (redis://host:port/db): "
                   "they resume on any worker sharing it")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="frames between a stream's checkpoints (default 25 with --redis)")
    p.add_argument("--prefix", default=None, help="of every Redis key this worker writes (default lstm:): "
                   "workers sharing streams share it; other services on the same Redis use others")
    p.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                   help="a stream's checkpoints expire this long after their latest write or claim "
                   "(default: kept until the stream ends)")
    p.add_argument("--worker", default=default_worker(), help="this worker's name in hellos (default hostname:pid)")
    args = p.parse_args(argv)
    for flag, value in (("--checkpoint-every", args.checkpoint_every), ("--prefix", args.prefix), ("--ttl", args.ttl)):
        if value is not None and not args.redis:
            p.error(f"{flag} needs --redis")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        p.error("--checkpoint-every: expected a whole number >= 0")
    if args.ttl is not None and not 0 < args.ttl < 1e9:  # also refuses nan and inf
        p.error("--ttl: expected a number of seconds > 0 (and below 1e9)")
    model = lstm_engine.load(args.model) if args.model else default_model(args.hidden)
    options = {}
    store = None
    if args.redis:
        store = RedisStore(args.redis, prefix="lstm:" if args.prefix is None else args.prefix, ttl_s=args.ttl)
        options["checkpoint_every"] = 25 if args.checkpoint_every is None else args.checkpoint_every
    app = create_app(lstm_engine.Engine(model), store=store, worker=args.worker, **options)
    # numba, numpy and the web stack leave ~10^5 objects that every full garbage
    # collection walks (~20 ms, a stall for every stream); freeze them out of it
    gc.freeze()
    # A batch's worker thread takes the GIL before and after each kernel call; while
    # the event loop keeps it busy, Python hands it over only every switch interval
    # (5 ms by default, half a frame period): ask for it ten times as often
    sys.setswitchinterval(0.0005)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
