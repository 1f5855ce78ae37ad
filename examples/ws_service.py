"""A streaming LSTM service: one WebSocket connection is one stream (see README.md here).

Binary frames both ways (`lstm_engine.serving.wire`): an 8-byte little-endian sequence
number, then float32 values -- a frame in, its output out under the same number. A
frame the service refuses gets a text message {"seq": n, "error": "..."} instead and
leaves the stream as it was. Closing the connection ends the stream.

    python examples/ws_service.py --hidden 128 --port 8000          # a random H=128 model
    python examples/ws_service.py --model net.lstm --port 8000
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket

from lstm_engine.serving import Batcher, Overloaded, wire


def create_app(engine, **batcher_options) -> FastAPI:
    """The service around a Batcher of `engine` (options: Batcher's); the upgrade
    response names the frame and output widths (x-input-size, x-output-size), which
    `lstm-engine loadtest` reads."""
    model = engine.model
    widths = [(b"x-input-size", str(model.input_size).encode()),
              (b"x-output-size", str(model.output_size).encode())]
    keys = itertools.count()
    # Streams idle past the batcher's idle_timeout_s are evicted, their snapshots kept
    # here until their connection sends again or closes: a silent client resumes exactly.
    parked = {}
    batcher = Batcher(engine, on_evict=parked.__setitem__, **batcher_options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.batcher = batcher  # for stats

    @app.websocket("/stream")
    async def stream(ws: WebSocket):
        await ws.accept(headers=widths)
        key = next(keys)
        try:
            while True:
                msg = await ws.receive()
                data = msg.get("bytes")
                if data is None:
                    if msg["type"] == "websocket.disconnect":
                        return
                    await ws.send_text(json.dumps({"seq": None, "error": "send binary frames"}))
                    continue
                seq = None
                try:
                    seq, x = wire.decode(data)
                    if key in parked:
                        await batcher.open(key, state=parked.pop(key))
                    y = await batcher.step(key, x, seq=seq)
                except (ValueError, Overloaded) as e:
                    await ws.send_text(json.dumps({"seq": seq, "error": str(e)}))
                    continue
                await ws.send_bytes(wire.encode(seq, y))
        finally:
            parked.pop(key, None)
            try:
                await batcher.close(key)
            except KeyError:  # it never sent a frame
                pass

    return app


def main(argv=None):
    import gc

    import uvicorn

    import lstm_engine
    from lstm_engine.bench import default_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model file (default: a random one-layer model of --hidden units)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    model = lstm_engine.load(args.model) if args.model else default_model(args.hidden)
    app = create_app(lstm_engine.Engine(model))
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
