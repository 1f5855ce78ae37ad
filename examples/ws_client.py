"""A resuming client of ws_service.py: streams frames to one named stream and carries it
across workers when its connection breaks (README.md here: Resume).

It keeps the last `keep` frames it sent. When the connection ends other than by its own
close (the worker died, restarted, or handed the stream over: close 4001), it connects
to the next worker URL, names the seq of the latest output it has (`received`), reads
the hello and replays its kept frames after the hello's `resume_seq`. Outputs of frames
it had answers for already must come back bit for bit the same: a mismatch is counted.

    python examples/ws_client.py ws://127.0.0.1:8000/stream ws://127.0.0.1:8001/stream \\
        --id speaker-1 --frames 3000 --period-ms 10
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
import urllib.parse

import numpy as np
import websockets
from websockets.asyncio.client import connect

from lstm_engine.serving import wire

TAKEN_OVER = 4000  # ws_service.py: a newer connection claimed this stream id


class TakenOver(RuntimeError):
    """Another connection claimed this stream id: two clients must not share one."""


class ResumingClient:
    """One named stream over ws_service.py workers.

    urls: ws:// URLs of workers sharing one store (tried round robin, from the first).
    keep: frames kept for replay; at least 2 * checkpoint_every + the frames in flight,
      or a resume may need a frame no longer kept (a failed recovery).
    window: most frames sent and not yet answered.
    on_output(seq, y, replayed): called for every output (float32 array); replayed is
      True for a frame answered before (its bytes are compared with the earlier ones).
    """

    def __init__(self, urls, stream_id: str, keep: int = 64, window: int = 4, on_output=None,
                 connect_timeout_s: float = 10.0):
        if not 1 <= window <= keep:
            raise ValueError(f"window={window}, keep={keep}: expected 1 <= window <= keep")
        self.urls, self.stream_id, self.keep, self.window = list(urls), stream_id, keep, window
        self.on_output, self.connect_timeout_s = on_output, connect_timeout_s
        self.input_size = self.output_size = None  # from the upgrade response
        self.hellos = []  # every hello, in order
        self.recovery_s = []  # per recovery: reconnect start to the first output of a new frame
        self.resumes = []  # per reconnection: (seq of the latest output then, the hello's resume_seq)
        self.counts = collections.Counter()  # frames, outputs, replayed, recoveries, failed, lost, mismatches, refused
        self.received = None  # seq of the latest output
        self._kept = collections.deque()  # (seq, payload) of the latest `keep` frames sent
        self._had = {}  # seq -> output bytes, for kept frames answered
        self._inflight = set()  # seqs sent on this connection and not answered
        self._next = 0  # the next new frame's seq
        self._ws = None
        self._url = -1  # index of the current worker URL
        self._recovering = None  # (start, seq of the latest output when the connection broke)

    async def connect(self) -> dict:
        """Connect to the next worker that answers (within connect_timeout_s) and read its
        hello; returns it."""
        deadline = time.perf_counter() + self.connect_timeout_s
        delay = 0.02
        while True:
            self._url = (self._url + 1) % len(self.urls)
            query = {"id": self.stream_id}
            if self.received is not None:
                query["received"] = str(self.received)
            url = f"{self.urls[self._url]}?{urllib.parse.urlencode(query)}"
            try:
                ws = await connect(url, compression=None, open_timeout=self.connect_timeout_s)
                try:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), self.connect_timeout_s))
                except BaseException:
                    await ws.close()
                    raise
            except websockets.InvalidStatus as e:
                if e.response.status_code == 403:  # the id was refused: no worker takes it
                    raise ValueError(f"{url}: refused (HTTP 403): a stream id is 1-128 of [A-Za-z0-9._:-]") from e
                err = e
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
                err = e  # not up (yet), or gone again before its hello
            else:
                self._ws = ws
                self.input_size = int(ws.response.headers["x-input-size"])
                self.output_size = int(ws.response.headers["x-output-size"])
                self.hellos.append(hello)
                return hello
            if time.perf_counter() + delay > deadline:
                raise ConnectionError(f"no worker of {self.urls} answered within {self.connect_timeout_s} s: {err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def run(self, frames, period_s: float = 0.0) -> dict:
        """Send `frames` (rows of a 2-D array), one every `period_s` at most, recovering
        from broken connections; wait for every output, end the stream (close 1000) and
        return summary()."""
        if self._ws is None:
            await self.connect()
        frames = np.asarray(frames, np.float32)
        if frames.ndim != 2 or frames.shape[1] != self.input_size:
            raise ValueError(f"frames: expected shape (T, {self.input_size}), got {frames.shape}")
        loop = asyncio.get_running_loop()
        start, k = loop.time(), 0
        while k < len(frames) or self._inflight:
            try:
                wait = None  # until a message comes
                if k < len(frames) and len(self._inflight) < self.window:
                    wait = start + k * period_s - loop.time()
                    if wait <= 0:
                        k += 1  # sent now, or kept and replayed if the connection breaks meanwhile
                        await self._send_new(frames[k - 1])
                        continue
                try:
                    msg = await asyncio.wait_for(self._ws.recv(), wait)  # recv may be cancelled safely
                except asyncio.TimeoutError:
                    continue
                self._receive(msg)
            except websockets.ConnectionClosed as e:
                await self._recover(e)
        await self._ws.close()  # code 1000: the stream has ended, the worker deletes its checkpoint
        return self.summary()

    def summary(self) -> dict:
        c = self.counts
        rec = self.recovery_s
        return {"frames": c["frames"], "outputs": c["outputs"], "replayed": c["replayed"],
                "recoveries": c["recoveries"], "failed_recoveries": c["failed"], "lost": c["lost"],
                "mismatches": c["mismatches"], "refused": c["refused"],
                "recovery_ms": [round(t * 1e3, 2) for t in rec], "resumes": self.resumes,
                "workers": [h["worker"] for h in self.hellos]}

    # ---- frames --------------------------------------------------------------------------
    async def _send_new(self, x):
        seq = self._next
        self._next += 1
        payload = wire.encode(seq, x)
        self._kept.append((seq, payload))
        if len(self._kept) > self.keep:
            old, _ = self._kept.popleft()
            self._had.pop(old, None)
        self.counts["frames"] += 1
        self._inflight.add(seq)  # before sending: a broken send is replayed like the rest
        await self._ws.send(payload)

    def _receive(self, msg):
        if isinstance(msg, str):
            m = json.loads(msg)
            if "worker" in m:  # a hello is never a refusal (none is expected mid-connection)
                return
            self.counts["refused"] += 1
            self._inflight.discard(m.get("seq"))
            print(f"refused: {m}", file=sys.stderr)
            return
        seq, y = wire.decode(msg)
        self._inflight.discard(seq)
        out = msg[wire.SEQ.size:]
        earlier = self._had.get(seq)
        if earlier is not None:
            self.counts["replayed"] += 1
            if earlier != out:
                self.counts["mismatches"] += 1
        else:
            self._had[seq] = out
            self.counts["outputs"] += 1
            if self._recovering is not None and (self._recovering[1] is None or seq > self._recovering[1]):
                self.recovery_s.append(time.perf_counter() - self._recovering[0])
                self._recovering = None
        if self.received is None or seq > self.received:
            self.received = seq
        if self.on_output is not None:
            self.on_output(seq, y, earlier is not None)

    async def _recover(self, closed: websockets.ConnectionClosed):
        """Reconnect after `closed` and replay the kept frames the new worker lacks."""
        code = closed.rcvd.code if closed.rcvd is not None else 1006
        if code == TAKEN_OVER:
            raise TakenOver(f"stream {self.stream_id!r} was claimed by another connection") from closed
        self.counts["recoveries"] += 1
        self._recovering = (time.perf_counter(), self.received)
        while True:
            hello = await self.connect()
            resume = hello["resume_seq"]
            self.resumes.append((self.received, resume))
            first = self._kept[0][0] if self._kept else self._next
            if (0 if resume is None else resume + 1) < first:
                self.counts["failed"] += 1  # the frames right after the checkpoint are gone
            if resume is not None and (self.received is None or resume > self.received):
                # the worker's checkpoint is past the latest output we have: those are lost
                self.counts["lost"] += resume - (-1 if self.received is None else self.received)
                self.received = resume
            self._inflight = set()
            try:
                for seq, payload in self._kept:
                    if resume is None or seq > resume:
                        self._inflight.add(seq)
                        await self._ws.send(payload)
                return
            except websockets.ConnectionClosed:  # that worker went too: the next one
                continue


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("urls", nargs="+", help="ws://host:port/stream of each worker (tried round robin)")
    p.add_argument("--id", required=True, help="the stream id (1-128 of A-Z a-z 0-9 . _ : -)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--npy", help="frames from a .npy file of shape (T, input size)")
    src.add_argument("--frames", type=int, default=1000, help="random frames to send (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--period-ms", type=float, default=10.0, help="time between frames (default 10)")
    p.add_argument("--keep", type=int, default=64, help="frames kept for replay (default 64)")
    p.add_argument("--window", type=int, default=4, help="most frames unanswered (default 4)")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)

    async def session():
        client = ResumingClient(args.urls, args.id, keep=args.keep, window=args.window)
        hello = await client.connect()
        print(f"connected to {hello['worker']}, resume_seq {hello['resume_seq']}")
        if args.npy:
            frames = np.load(args.npy, allow_pickle=False)
        else:
            frames = np.random.default_rng(args.seed).standard_normal((args.frames, client.input_size))
        return await client.run(frames, args.period_ms / 1e3)

    s = asyncio.run(session())
    rec = s["recovery_ms"]
    print(f"{s['frames']} frames, {s['outputs']} outputs, {s['replayed']} replayed, {s['recoveries']} recoveries "
          f"({s['failed_recoveries']} failed), recovery {max(rec) if rec else 0:.1f} ms at most, "
          f"{s['lost']} lost, {s['mismatches']} mismatches, {s['refused']} refused; workers {' -> '.join(s['workers'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0 if not (s["lost"] or s["mismatches"] or s["failed_recoveries"]) else 1


if __name__ == "__main__":
    sys.exit(main())
