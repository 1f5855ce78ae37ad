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
        return self.sent - self.refused - self._done().size

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


async def open_loop(tally: Tally, send) -> None:
    """Call send(i, k) for frame k of stream i at its scheduled time (in bursts, as the
    event loop wakes), then wait for the answers: up to 20 periods, at least 1 s."""
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
    end = time.perf_counter() + max(1.0, 20 * tally.period)
    while tally.pending() > 0 and time.perf_counter() < end:
        await asyncio.sleep(0.05)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(f"{needed - 100} streams need {needed} open files; this process may open {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def run_websocket(url: str, streams: int, period_ms: float, seconds: float, seed: int = 0) -> dict:
    """One open-loop run against a service speaking `wire` frames, one WebSocket per
    stream; its upgrade response names the frame width (x-input-size)."""
    check_bounds(streams, period_ms, seconds)
    host, port, path = loopback_target(url)
    _raise_fd_limit(streams + 100)
    period = period_ms / 1e3
    tally = Tally(streams, period, max(1, round(seconds / period)))

    def on_binary(i, data):
        tally.answered(i, wire.SEQ.unpack_from(data)[0])

    def on_text(i, text):  # the service's refusal of one frame: {"seq": k, "error": ...}
        tally.refused += 1

    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def open_one(i):
        async with gate:
            return await connect(host, port, path, functools.partial(on_binary, i), functools.partial(on_text, i))

    opened = await asyncio.gather(*(open_one(i) for i in range(streams)), return_exceptions=True)
    clients = [c for c, _ in (o for o in opened if not isinstance(o, BaseException))]
    try:
        failed = [o for o in opened if isinstance(o, BaseException)]
        if failed:
            raise ConnectionError(f"{len(failed)} of {streams} streams could not connect to {url}: {failed[0]}")
        width = int(opened[0][1].get("x-input-size", 0))
        if width < 1:
            raise ValueError(f"{url}: the upgrade response names no frame width (x-input-size)")
        rng = np.random.default_rng(seed)
        frames = [rng.standard_normal(width).astype("<f4").tobytes() for _ in range(streams)]
        pack = wire.SEQ.pack

        def send(i, k):
            clients[i].send_binary(pack(k) + frames[i])

        await open_loop(tally, send)
    finally:
        for c in clients:
            c.close()
        if clients:
            await asyncio.wait([c.closed for c in clients], timeout=5)
    return tally.report()


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
            f"{'' if served(r) else '  NOT SERVED'}")


def write_json(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
