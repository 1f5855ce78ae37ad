"""Open-loop load test of a streaming service (`lstm-engine loadtest`).

N streams send frames on an absolute schedule -- frame k of stream i at
t0 + (k + i/N) * period, whatever the answers do -- and a frame's latency runs from
its scheduled time to its answer, so neither a slow server nor a generator that falls
behind can hide time (a closed loop would send less when the server slows down).
Runs are bounded in streams, seconds and trials, and reach loopback addresses only.
"""
from __future__ import annotations

import array
import asyncio
import functools
import ipaddress
import json
import math
import os
import resource
import socket
import time
import urllib.parse

import numpy as np

from . import wire
from .wsclient import connect

MAX_STREAMS = 10_000
MAX_SECONDS = 600.0
MAX_TRIALS = 12  # of --find-max: doubling then halving the gap, to within 5%
CONNECT_AT_ONCE = 64  # handshakes in flight while the streams connect
KEEP = 64  # frames a resumable stream keeps for a replay: at least 2 * checkpoint_every + max_pending
#            of the service (two checkpoints back, plus frames in flight), 25 and 4 by default
MAX_KEEP = 100_000
HELLO_TIMEOUT_S = 10.0  # for the upgrade and the hello of one connection
RECONNECT_ROUNDS = 3  # a stream that lost its worker tries every URL this many times, then fails
RECONNECT_PAUSE_S = 0.2  # between rounds: a worker may be restarting
RECOVERY_GRACE_S = 5.0  # longer wait for answers at the end of a resumable run: a stream may be
#                         reconnecting


def loopback_target(url: str):
    """(address, port, path) of a ws:// URL whose host is a loopback address; ValueError
    for anything else: this tool sends thousands of frames a second and must never
    point at someone else's machine."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "ws":
        raise ValueError(f"{url}: expected a ws:// URL (the load test speaks plain WebSocket over loopback)")
    if not u.hostname:
        raise ValueError(f"{url}: no host")
    try:
        port = u.port or 80
        infos = socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        raise ValueError(f"{url}: cannot resolve the host ({e})") from None
    addresses = {info[4][0] for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise ValueError(f"{url}: {u.hostname} is not a loopback address ({', '.join(outside)}); "
                         "the load test only reaches this machine")
    return sorted(addresses)[0], port, (u.path or "/") + (f"?{u.query}" if u.query else "")


def check_bounds(streams: int, period_ms: float, seconds: float) -> None:
    if not 1 <= streams <= MAX_STREAMS:
        raise ValueError(f"--streams {streams}: expected 1 to {MAX_STREAMS}")
    if not 0.1 <= period_ms <= 10_000:
        raise ValueError(f"--period-ms {period_ms}: expected 0.1 to 10000")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds {seconds}: expected more than 0 and at most {MAX_SECONDS:g}")


class Tally:
    """What one run saw: each frame's latency (NaN until answered), refusals, and how
    late the generator itself sent."""

    def __init__(self, streams: int, period: float, frames: int):
        self.n, self.period, self.frames = streams, period, frames
        self.step = period / streams  # one frame is due every `step` seconds
        self.t0 = 0.0
        # by j = k * n + i; an array.array, whose items read and write several times
        # faster than a numpy array's from Python
        self.latency = array.array("f", [math.nan]) * (streams * frames)
        self.refused = 0
        self.unexpected = 0  # answers to frames never sent, or answered twice
        self.sent = 0
        self.send_lag = []  # per burst: how late its first frame went out
        self.given_up = set()  # streams that ended early: the end of a run waits for none of their answers

    def due(self, i: int, k: int) -> float:
        return self.t0 + (k * self.n + i) * self.step

    def answered(self, i: int, k: int) -> None:
        j = k * self.n + i
        if not (0 <= j < self.sent and i < self.n) or not math.isnan(self.latency[j]):
            self.unexpected += 1
            return
        self.latency[j] = time.perf_counter() - self.due(i, k)

    def _done(self) -> np.ndarray:
        lat = np.frombuffer(self.latency, np.float32)
        return lat[~np.isnan(lat)]

    def pending(self) -> int:
        lat = np.frombuffer(self.latency, np.float32)[:self.sent]
        gone = sum(int(np.isnan(lat[i::self.n]).sum()) for i in self.given_up)
        return self.sent - self.refused - self._done().size - gone

    def report(self) -> dict:
        done = self._done().astype(np.float64) * 1e3
        p50, p99, p999 = np.percentile(done, (50, 99, 99.9)) if done.size else (math.nan,) * 3
        lag = np.percentile(self.send_lag, 99) * 1e3 if self.send_lag else math.nan
        return {"streams": self.n, "period_ms": self.period * 1e3, "seconds": self.frames * self.period,
                "sent": self.sent, "answered": int(done.size), "refused": self.refused,
                "dropped": self.sent - int(done.size), "late": int((done > self.period * 1e3).sum()),
                "unexpected": self.unexpected,
                "latency_ms": {"p50": float(p50), "p99": float(p99), "p99.9": float(p999),
                               "max": float(done.max()) if done.size else math.nan},
                "send_lag_p99_ms": float(lag)}


async def open_loop(tally: Tally, send, grace: float = 0.0) -> None:
    """Call send(i, k) for frame k of stream i at its scheduled time (in bursts, as the
    event loop wakes), then wait for the answers: up to 20 periods, at least 1 s, plus
    `grace` seconds."""
    n, step, total = tally.n, tally.step, tally.n * tally.frames
    tally.t0 = t0 = time.perf_counter() + 0.01
    j = 0
    while j < total:
        now = time.perf_counter()
        last = min(total, int((now - t0) / step) + 1)  # every frame due by now
        if last > j:
            tally.send_lag.append(now - (t0 + j * step))
        while j < last:
            k, i = divmod(j, n)
            tally.sent = j + 1  # before send: an answer may come back within it
            send(i, k)
            j += 1
        if j < total:
            await asyncio.sleep(t0 + j * step - time.perf_counter())
    end = time.perf_counter() + max(1.0, 20 * tally.period) + grace
    while tally.pending() > 0 and time.perf_counter() < end:
        await asyncio.sleep(0.05)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(f"{needed - 100} streams need {needed} open files; this process may open {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def hello(text: str):
    """The service's hello (a JSON object with the key "worker", sent once as a
    connection opens), or None for any other text message (a refusal of one frame)."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) and "worker" in msg else None


class Inputs:
    """The frames of a run: frame k of stream i is one of POOL random frames, picked by
    (i + k). Varied, because a constant frame drives an LSTM to a fixed point, where a
    stream resumed from the wrong state or missing a frame answers the same; and drawn
    from a pool, so that sending costs no more than a list index."""

    POOL = 16

    def __init__(self, width: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pool = [rng.standard_normal(width).astype("<f4").tobytes() for _ in range(self.POOL)]

    def values(self, i: int, k: int) -> np.ndarray:
        """Frame k of stream i as float32s (a reference to compare outputs with)."""
        return np.frombuffer(self.pool[(i + k) % self.POOL], "<f4")


class _Anonymous:
    """One connection per stream, for as long as it lasts (a lost connection loses the
    stream's remaining frames)."""

    def __init__(self, targets, tally, on_answer):
        self.targets, self.tally = targets, tally
        self.clients = [None] * tally.n
        answered = tally.answered
        seq = wire.SEQ.unpack_from
        if on_answer is None:
            self._on_binary = lambda i, data: answered(i, seq(data)[0])
        else:
            def on_binary(i, data):
                answered(i, seq(data)[0])
                on_answer(i, data)

            self._on_binary = on_binary

    def on_text(self, i, text):
        if hello(text) is None:  # the service refused one frame: {"seq": k, "error": ...}
            self.tally.refused += 1

    async def open(self, i) -> dict:
        host, port, path = self.targets[i % len(self.targets)]
        self.clients[i], headers = await connect(host, port, path, functools.partial(self._on_binary, i),
                                                 functools.partial(self.on_text, i))
        return headers

    def sender(self, inputs):
        clients, pool, size, pack = self.clients, inputs.pool, inputs.POOL, wire.SEQ.pack

        def send(i, k):
            clients[i].send_binary(pack(k) + pool[(i + k) % size])

        return send

    async def aclose(self):
        clients = [c for c in self.clients if c is not None]
        for c in clients:
            c.close()
        if clients:
            await asyncio.wait([c.closed for c in clients], timeout=5)

    def report(self) -> dict:
        return {}


class _Stream:
    """The client side of one resumable stream."""

    __slots__ = ("id", "url", "client", "due", "wire", "received", "answers", "lost_at", "hello")

    def __init__(self, stream_id, url, keep):
        self.id = stream_id
        self.url = url  # index of its worker in the URL list
        self.client = None  # its connection; None while it reconnects, or after it failed
        self.due = 0  # frames scheduled so far (frames due while it reconnects are sent after)
        self.wire = 0  # frames sent: the last `keep` of them are kept for a replay
        self.received = -1  # seq of the latest output received
        self.answers = array.array("q", bytes(8 * keep))  # hash of output seq at [seq % keep]
        self.lost_at = None  # when its connection was lost, until the first answer after
        self.hello = None  # a future the next hello resolves


class _Resumable:
    """Streams named `lt-<run id>-<i>` that survive their worker (the resume protocol of
    examples/ws_service.py): on connection loss a stream reconnects to the next URL
    with the seq of its latest output, reads the hello, replays the frames it kept
    after resume_seq, then sends the frames that fell due meanwhile, at once, in order
    (their latency still runs from their scheduled time). Outputs it had already are
    compared with the earlier ones; outputs the resume skipped over are lost."""

    def __init__(self, targets, tally, on_answer, keep):
        self.targets, self.tally, self.on_answer, self.keep = targets, tally, on_answer, keep
        run = os.urandom(4).hex()
        self.streams = [_Stream(f"lt-{run}-{i}", i % len(targets), keep) for i in range(tally.n)]
        self.inputs = None
        self.ending = False
        self.tasks = set()  # reconnections under way
        self.recoveries = self.failed = self.lost = self.replayed = self.mismatches = 0
        self.recovery_s = []

    # ---- messages (the hot path: one call per answer) ---------------------------------
    def on_binary(self, i, data):
        st = self.streams[i]
        seq = wire.SEQ.unpack_from(data)[0]
        if st.lost_at is not None:
            self.recovery_s.append(time.perf_counter() - st.lost_at)
            st.lost_at = None
        if seq > st.received:
            self.tally.answered(i, seq)
            st.received = seq
            st.answers[seq % self.keep] = hash(data)
            if self.on_answer is not None:
                self.on_answer(i, data)
        else:  # a replayed frame's output: the same as before, or the resume went wrong
            self.replayed += 1
            if st.answers[seq % self.keep] != hash(data):
                self.mismatches += 1

    def on_text(self, i, text):
        msg = hello(text)
        if msg is None:
            self.tally.refused += 1
        elif self.streams[i].hello is not None and not self.streams[i].hello.done():
            self.streams[i].hello.set_result(msg)

    def sender(self, inputs):
        self.inputs = inputs
        streams, pool, size, pack = self.streams, inputs.pool, inputs.POOL, wire.SEQ.pack

        def send(i, k):
            st = streams[i]
            st.due = k + 1
            c = st.client
            if c is not None:
                c.send_binary(pack(k) + pool[(i + k) % size])
                st.wire = k + 1

        return send

    # ---- connections ------------------------------------------------------------------
    async def open(self, i) -> dict:
        client, headers, _ = await self._connect(i)
        self._attach(i, client)
        return headers

    async def _connect(self, i):
        """A connection of stream i to its current URL, with `received`: (client, upgrade
        headers, hello). Without a hello in time the connection is dropped (abnormally:
        the stream stays resumable elsewhere)."""
        st = self.streams[i]
        host, port, path = self.targets[st.url]
        query = f"id={st.id}" + (f"&received={st.received}" if st.received >= 0 else "")
        st.hello = asyncio.get_running_loop().create_future()
        client, headers = await asyncio.wait_for(
            connect(host, port, path + ("&" if "?" in path else "?") + query,
                    functools.partial(self.on_binary, i), functools.partial(self.on_text, i)), HELLO_TIMEOUT_S)
        try:
            await asyncio.wait((st.hello, client.closed), timeout=HELLO_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the run ends: so does the stream
            client.close()
            raise
        if not st.hello.done():
            client.abort()
            raise ConnectionError(f"{host}:{port}: no hello from the service (does it resume streams?)")
        return client, headers, st.hello.result()

    def _attach(self, i, client):
        self.streams[i].client = client
        client.closed.add_done_callback(functools.partial(self._lost, i, client))

    def _lost(self, i, client, _):
        st = self.streams[i]
        if self.ending or st.client is not client:
            return
        st.client = None
        if st.lost_at is None:  # a stream lost again while recovering counts from the first loss
            st.lost_at = time.perf_counter()
        task = asyncio.get_running_loop().create_task(self._recover(i))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _recover(self, i):
        """Reconnect stream i to the next URLs in turn (RECONNECT_ROUNDS rounds), resume."""
        st, n = self.streams[i], len(self.targets)
        for attempt in range(RECONNECT_ROUNDS * n):
            st.url = (st.url + 1) % n
            try:
                client, _, msg = await self._connect(i)
            except (OSError, asyncio.TimeoutError):
                if (attempt + 1) % n == 0:  # every worker refused: give them a moment
                    await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            self._resume(i, client, msg)
            return
        self._fail(i)

    def _resume(self, i, client, msg):
        st = self.streams[i]
        resume = msg.get("resume_seq")
        start = 0 if resume is None else resume + 1 if isinstance(resume, int) and resume >= 0 else -1
        if start > st.received + 1:  # outputs nobody will send again
            self.lost += start - 1 - st.received
        if start < max(0, st.wire - self.keep):  # the frames to replay are no longer kept: the stream ends
            self._fail(i)
            client.close()
            return
        self.recoveries += 1
        pool, size, pack = self.inputs.pool, self.inputs.POOL, wire.SEQ.pack
        for k in range(start, st.due):
            client.send_binary(pack(k) + pool[(i + k) % size])
        st.wire = st.due
        self._attach(i, client)

    def _fail(self, i):
        """Stream i could not be resumed: it sends no more frames."""
        self.failed += 1
        self.streams[i].lost_at = None
        self.tally.given_up.add(i)

    async def aclose(self):
        """End every stream (close code 1000: the service deletes its checkpoint)."""
        self.ending = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        clients = [st.client for st in self.streams if st.client is not None]
        for c in clients:
            c.close()
        if clients:
            await asyncio.wait([c.closed for c in clients], timeout=5)

    def report(self) -> dict:
        rec = np.array(self.recovery_s) * 1e3
        return {"keep": self.keep, "recoveries": self.recoveries,
                "recovery_ms": {"p50": float(np.median(rec)) if rec.size else math.nan,
                                "max": float(rec.max()) if rec.size else math.nan},
                "lost": self.lost, "replayed": self.replayed, "replay_mismatches": self.mismatches,
                "failed_recoveries": self.failed}


async def run_websocket(urls, streams: int, period_ms: float, seconds: float, seed: int = 0,
                        resume: bool = False, keep: int = KEEP, on_answer=None) -> dict:
    """One open-loop run against a service speaking `wire` frames, one WebSocket per
    stream, streams spread over `urls` (one URL or a list of workers) round robin; the
    upgrade response names the frame width (x-input-size). resume: the streams are
    named and resume after a lost connection (`_Resumable`), each keeping its last
    `keep` frames. on_answer(i, data): called with each first answer of stream i (the
    binary message as received), to check outputs."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    check_bounds(streams, period_ms, seconds)
    if resume and not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"--keep {keep}: expected 1 to {MAX_KEEP}")
    targets = [loopback_target(u) for u in urls]
    _raise_fd_limit(streams + 100)
    period = period_ms / 1e3
    tally = Tally(streams, period, max(1, round(seconds / period)))
    side = _Resumable(targets, tally, on_answer, keep) if resume else _Anonymous(targets, tally, on_answer)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def open_one(i):
        async with gate:
            return await side.open(i)

    opened = await asyncio.gather(*(open_one(i) for i in range(streams)), return_exceptions=True)
    try:
        failed = [o for o in opened if isinstance(o, BaseException)]
        if failed:
            raise ConnectionError(f"{len(failed)} of {streams} streams could not connect to "
                                  f"{' '.join(urls)}: {failed[0]}")
        width = int(opened[0].get("x-input-size", 0))
        if width < 1:
            raise ValueError(f"{urls[0]}: the upgrade response names no frame width (x-input-size)")
        # a stream may be reconnecting as the schedule ends
        await open_loop(tally, side.sender(Inputs(width, seed)), RECOVERY_GRACE_S if resume else 0.0)
    finally:
        await side.aclose()
    return {**tally.report(), **side.report()}


def served(report: dict) -> bool:
    """Every frame answered, p99 within the period."""
    return report["dropped"] == 0 and report["latency_ms"]["p99"] < report["period_ms"]


def generator_lagged(report: dict) -> bool:
    """The generator itself sent late (p99 over half a period): the machine was short of
    CPU for it, and the run says as much about the machine as about the server."""
    return report["send_lag_p99_ms"] > report["period_ms"] / 2


async def find_max(run, start: int, progress=print) -> dict:
    """The most streams `run(n) -> report` serves (see `served`): double from `start`,
    then halve the gap; at most MAX_TRIALS runs, at most MAX_STREAMS streams. A size
    that failed while the generator lagged is run once more before it counts."""
    trials = []
    good, bad, n = 0, None, start
    while len(trials) < MAX_TRIALS:
        report = await run(n)
        trials.append(report)
        progress(summary(report))
        retried = len(trials) > 1 and trials[-2]["streams"] == n
        if not served(report) and generator_lagged(report) and not retried:
            continue  # the same n again
        if served(report):
            good = n
        else:
            bad = n
        if bad is None:
            if n >= MAX_STREAMS:
                break
            n = min(2 * n, MAX_STREAMS)
        else:
            if bad - good <= max(1, good // 20):
                break
            n = (good + bad) // 2
    return {"max_streams": good, "period_ms": trials[0]["period_ms"], "trials": trials}


def summary(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"{r['streams']:>6} streams  p50 {lat['p50']:7.2f} ms  p99 {lat['p99']:7.2f} ms  "
            f"p99.9 {lat['p99.9']:7.2f} ms  late {r['late']}/{r['answered']}  dropped {r['dropped']}"
            f"  (send lag p99 {r['send_lag_p99_ms']:.2f} ms{', the generator lagged' if generator_lagged(r) else ''})"
            f"{'' if served(r) else '  NOT SERVED'}"
            + ("" if "recoveries" not in r else
               f"\n       resumed {r['recoveries']} (p50 {r['recovery_ms']['p50']:.1f} ms, max "
               f"{r['recovery_ms']['max']:.1f} ms)  failed {r['failed_recoveries']}  lost {r['lost']}  "
               f"replayed {r['replayed']}, {r['replay_mismatches']} mismatched"))


def write_json(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
