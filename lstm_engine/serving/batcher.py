"""`Batcher`: a registry of streams and async micro-batching over `Engine.step_many`.

One asyncio task (the batch loop) closes batches; a single worker thread runs them,
so the event loop never waits on a kernel (step_many releases the GIL) and frames
keep arriving, and filling the next batch, while one runs. Batches run one at a
time, which is what lets a batch hold at most one frame per stream and still keep
each stream's frames in arrival order.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import time

import numpy as np

from ..inputs import F32, kernel_array, numeric
from .waits import WaitLog

# Defaults, each with its reason (DESIGN §8, issue 14):
MAX_WAIT_MS = 1.0  # a tenth of a 10 ms audio frame: batches form without adding a period (Ray Serve's
#                    10 ms default wait is a whole frame; Triton's 0 never waits, so never batches
#                    streams whose frames are a little apart)
MAX_BATCH = 256  # step_many's cost per stream is flat from ~50 streams on (H=128: 2.4 µs), and 256
#                  frames of H=128 run in ~0.6 ms, well inside a period
IDLE_TIMEOUT_S = 30.0  # a speaker can be silent for seconds: Triton's 1 s drops such streams' state
MAX_PENDING = 4  # 40 ms of 10 ms frames: absorbs a network burst, bounds what one client can queue
MAX_STREAMS = 100_000
SEQ_END = 1 << 64  # seqs are unsigned 64-bit, as on the example service's wire
CHECKPOINTS_PER_BATCH = 32  # the others due wait for their stream's next frame: streams opened
#                            together (a service starting, clients reconnecting after a worker
#                            died) would otherwise all checkpoint in the same batch every
#                            checkpoint_every frames, a stall of ~10 µs a stream; deferred
#                            once, their checkpoints stay spread
STORE_BATCH = 256  # writes in one write_many: 1 MB of H=128 snapshots, while a shutdown may write
#                   every stream's
STORE_PATIENCE_S = 10.0  # a write the store failed is retried (waits growing from 0.1 s to 2 s)
#                          for this long: a restart of Redis loses no checkpoint, and a store
#                          that is down, or hangs until its timeout, is given up on


class Overloaded(RuntimeError):
    """Backpressure: too many frames queued for one stream (max_pending) or too many open
    streams (max_streams). Nothing was queued or opened; the caller may retry later."""


def _seq(seq) -> int:
    if isinstance(seq, (int, np.integer)) and not isinstance(seq, (bool, np.bool_)) and 0 <= seq < SEQ_END:
        return int(seq)
    raise ValueError(f"seq={seq!r}: expected an integer in [0, 2**64), or None")


def _retrieved(task):
    """Done callback of tasks whose failure is reported elsewhere: asyncio must not log it."""
    if not task.cancelled():
        task.exception()


class Moved(RuntimeError):
    """The stream cannot go on here as its client expects: another worker claimed its key
    (the store refused this worker's checkpoint), or it was just resumed from a
    checkpoint older than the frame it is given (frames in between are missing). The
    client reconnects, asks `resume_seq` and replays the frames after it."""


class _Slot:
    """One open stream and the frames queued for it, oldest first."""

    __slots__ = ("key", "stream", "pending", "busy", "last", "last_batch", "seq", "closing", "drained",
                 "loading", "epoch", "ckpt_seq", "since_ckpt", "moved", "resumed", "write")

    def __init__(self, key, stream, now):
        self.key = key
        self.stream = stream  # None while a store loads it
        self.pending = []  # (x, future, arrival time, seq): at most max_pending, and an empty list
        #                    is 56 bytes where a deque is 600 (memory per open stream)
        self.busy = False  # a frame of it is in the running batch
        self.last = now  # arrival of its latest frame, for idle eviction
        self.last_batch = -1  # number of the latest batch that held one of its frames
        self.seq = None  # seq of its latest applied frame
        self.closing = False
        self.drained = None  # a future close() waits on until the queued frames are done
        self.loading = None  # the task that resumes it from the store
        self.epoch = None  # its owner epoch in the store
        self.ckpt_seq = None  # seq inside its latest stored checkpoint
        self.since_ckpt = 0  # frames applied since that checkpoint
        self.moved = False  # another worker owns its key now
        self.resumed = False  # resumed from a stored checkpoint, no frame applied since
        self.write = None  # the future of its latest store write


class _Write:
    """A store write queued by the Batcher: a checkpoint of `slot`'s key, or (blob None)
    its deletion, and the futures of those waiting for it."""

    __slots__ = ("slot", "epoch", "seq", "blob", "waiting", "failing_since")

    def __init__(self, slot, seq, blob, waiting):
        self.slot, self.epoch, self.seq, self.blob, self.waiting = slot, slot.epoch, seq, blob, waiting
        self.failing_since = None  # when the store first failed it


class Batcher:
    """Streams of one engine keyed by any hashable, stepped together through `step_many`.

    engine: an `lstm_engine.Engine` (or anything with its `model`, `open_stream`,
      `restore` and `step_many`).
    max_batch: most frames in one step_many call.
    max_wait_ms: longest a frame waits for others to join its batch. A batch closes as
      soon as the engine is free and every stream of the previous batch has its next
      frame queued (streams stepping in lockstep never wait), or this time has passed
      since its oldest frame arrived, or it holds max_batch frames.
    max_streams: open streams; one more raises `Overloaded`.
    max_pending: unanswered frames of one stream (queued or running); one more raises
      `Overloaded`.
    idle_timeout_s: a stream without a frame for this long is snapshotted and closed;
      None keeps streams until close(). Its snapshot goes to the store, else to
      `on_evict(key, blob)` (which may be a coroutine function), else nowhere: its
      next frame then opens a new stream at zero state.
    store: a `RedisStore`, or anything with its two coroutines:
      `load(key, received=None) -> (epoch, seq, blob)` claims the key for this worker
      (the epoch is newer than every earlier claim; seq and blob are None when nothing
      is stored), and `write_many([(key, epoch, seq, blob), ...]) -> [bool, ...]` applies
      checkpoints (blob None: delete the key) in order, each refused unless its epoch
      still owns its key. A key opened here resumes from its checkpoint; checkpoints are
      written every `checkpoint_every` frames of a stream (0: never), when it is evicted
      or released, and for every stream at aclose(); close() deletes the key. Writes
      run in the background, those that are due together in one `write_many`, so no
      frame waits on the store.

    Use it from one event loop (the one of its first call).
    """

    def __init__(self, engine, max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS, max_streams=MAX_STREAMS,
                 max_pending=MAX_PENDING, idle_timeout_s=IDLE_TIMEOUT_S, on_evict=None, store=None,
                 checkpoint_every=0):
        for name, v in (("max_batch", max_batch), ("max_streams", max_streams), ("max_pending", max_pending)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected a whole number >= 1")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms={max_wait_ms!r}: expected a number >= 0")
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s={idle_timeout_s!r}: expected a number > 0, or None")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={checkpoint_every!r}: expected a whole number >= 0")
        if checkpoint_every and store is None:
            raise ValueError("checkpoint_every needs a store to write the checkpoints to")
        self.engine = engine
        self.max_batch, self.max_wait_ms, self.max_streams = max_batch, float(max_wait_ms), max_streams
        self.max_pending, self.idle_timeout_s = max_pending, idle_timeout_s
        self.on_evict, self.store, self.checkpoint_every = on_evict, store, checkpoint_every
        model = engine.model
        self._tokens = model.embedding is not None
        self._xshape = None if self._tokens else (model.input_size,)  # of a frame step() takes as it is
        # frames are copied into this buffer to make step_many's X; batches run one at a
        # time, so one buffer serves them all
        self._X = np.empty((max_batch,) if self._tokens else (max_batch, model.input_size),
                           np.int64 if self._tokens else F32)
        self._slots = collections.OrderedDict()  # least recently stepped first: eviction reads the front
        self._ready = collections.deque()  # slots with a queued frame, in the order they got one
        self._oldest = 0.0  # arrival of the oldest queued frame
        self._batch_no = 0  # the latest batch closed
        self._missing = 0  # streams of that batch without a next frame queued yet
        self._waiter = None  # the batch loop sleeps on it
        self._loop = None
        self._pool = None
        self._tasks = []  # the batch loop and the idle sweeper
        # the store keeps an older checkpoint at least this far behind its newest: that of
        # the previous period, even when a release follows a periodic checkpoint closely
        self._keep_behind = max(checkpoint_every, max_pending)
        self._outbox = {}  # key -> its _Write not yet sent: a newer write of a key replaces it
        self._writer = None  # the task sending the outbox, one write_many at a time (in order)
        self._leaving = {}  # key -> the store write of its last checkpoint (eviction, release,
        #                     close), which reopening the key waits for
        self._closed = False
        self._closing = 0  # streams whose close() waits for their queued frames
        self._waits = WaitLog()
        self._counts = collections.Counter()

    # ---- public API ----------------------------------------------------------------
    def step(self, key, x, seq=None) -> asyncio.Future:
        """Queue one frame of stream `key` (opened at zero state, or from the store, on
        first use); `await` the result for its output.

        The frame is queued when step is called, so calls are applied in call order.
        Raises at once: `Overloaded` (max_pending, max_streams), `ValueError` for a frame
        of the wrong shape or type, `RuntimeError` while the stream closes or after
        aclose(), `Moved` once another worker owns the key. A frame the engine refuses
        (NaN, a token id out of range) fails its own future with `ValueError`, its stream
        unchanged; the rest of its batch runs. So does a frame whose `seq` is not after
        the seq of the stream's latest frame (a replay must start after `resume_seq`), or
        that has none when its stream's frames have. `seq`: an integer in [0, 2**64).
        Cancelling the future before its batch starts withdraws the frame.
        """
        if self._closed:
            raise RuntimeError("this Batcher is closed")
        if not (type(x) is np.ndarray and x.dtype is F32 and x.shape == self._xshape):
            x = self._frame(x)
        if seq is not None and not (type(seq) is int and 0 <= seq < SEQ_END):
            seq = _seq(seq)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key)
        elif slot.closing:
            raise RuntimeError(f"stream {key!r} is closing")
        elif slot.moved:
            raise Moved(f"stream {key!r} is owned by another worker now")
        elif len(slot.pending) + slot.busy >= self.max_pending:
            self._counts["overloaded"] += 1
            raise Overloaded(f"stream {key!r} has {self.max_pending} frames unanswered (max_pending)")
        else:
            self._slots.move_to_end(key)
        fut = self._loop.create_future()
        slot.last = now = time.perf_counter()
        pending = slot.pending
        pending.append((x, fut, now, seq))
        if len(pending) == 1 and slot.stream is not None:
            self._make_ready(slot, now)
        return fut

    async def open(self, key, state=None) -> None:
        """Open stream `key`: at `state` (a snapshot's bytes, or (h, c) lists), else at
        zero state, or -- with a store -- from its stored checkpoint."""
        if key in self._slots:
            raise ValueError(f"stream {key!r} is already open")
        slot = self._new_slot(key, state)
        if slot.loading is not None:
            await asyncio.shield(slot.loading)

    async def close(self, key) -> bytes:
        """Finish the frames queued for `key`, then close it: returns its final snapshot
        and frees its slot. The stream has ended: with a store, its key is deleted there."""
        return await self._leave(key, delete=True)

    async def release(self, key) -> bytes:
        """Finish the frames queued for `key`, write its checkpoint to the store and free
        its slot: a handover, after which the stream resumes wherever its key is opened
        next (here or on another worker). Returns the snapshot."""
        if self.store is None:
            raise RuntimeError("release needs a store (close() ends a stream without one)")
        return await self._leave(key, delete=False)

    async def _leave(self, key, delete):
        slot = self._slots.get(key)
        if slot is None:
            raise KeyError(f"no open stream {key!r}")
        if slot.closing:
            raise RuntimeError(f"stream {key!r} is already closing")
        slot.closing = True
        self._closing += 1
        # carried out even when the caller is cancelled: a stream left half-closed would
        # refuse every call, and never be evicted
        done = self._loop.create_task(self._finish_leaving(slot, delete))
        done.add_done_callback(_retrieved)
        return await asyncio.shield(done)

    async def _finish_leaving(self, slot, delete):
        try:
            if slot.loading is not None:
                await asyncio.shield(slot.loading)
            if slot.pending or slot.busy:
                slot.drained = self._loop.create_future()
                await slot.drained
        finally:
            self._closing -= 1
        blob = self._remove(slot)
        if self.store is not None and not slot.moved:
            # a store that fails even after retries is counted in stats(); the caller has
            # the snapshot either way
            await asyncio.gather(self._write_last(slot, None if delete else blob), return_exceptions=True)
        return blob

    async def resume_seq(self, key, received=None):
        """The seq of the last frame inside the checkpoint `key` resumes from (None if the
        store holds none): the client replays its frames after it. Opens the key here
        from the store when it is not open. `received`: the seq of the latest output the
        client has; the store then picks the newest checkpoint at or before it, so that
        no output is lost between the checkpoint and the client (the store keeps two)."""
        if self.store is None:
            raise RuntimeError("resume_seq needs a store")
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key, received=received)
        if slot.loading is not None:
            await asyncio.shield(slot.loading)
        return slot.ckpt_seq

    def __len__(self) -> int:
        return len(self._slots)

    def stats(self) -> dict:
        """Counters since start, and queue waits (arrival to batch start) over the
        latest frames."""
        c = self._counts
        p50, p99 = self._waits.percentiles((50, 99))
        return {"streams": len(self._slots), "frames": c["frames"], "batches": c["batches"],
                "mean_batch": c["frames"] / c["batches"] if c["batches"] else 0.0,
                "queue_wait_p50_ms": p50 * 1e3, "queue_wait_p99_ms": p99 * 1e3,
                "evicted": c["evicted"], "overloaded": c["overloaded"], "failed": c["failed"],
                "checkpoints": c["checkpoints"], "store_writes": c["store_writes"],
                "store_errors": c["store_errors"], "moved": c["moved"]}

    async def aclose(self) -> None:
        """Refuse new frames, finish the queued ones, stop. With a store, every stream
        changed since its latest checkpoint is checkpointed first (a worker that shuts
        down hands its streams over). Streams stay open (close() each for its snapshot)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is None:
            return
        loaders = [s.loading for s in self._slots.values() if s.loading is not None]
        await asyncio.gather(*loaders, return_exceptions=True)
        self._wake()
        batches, sweeper = self._tasks
        sweeper.cancel()
        await asyncio.gather(batches, sweeper, return_exceptions=True)
        if self.store is not None:
            for slot in self._slots.values():
                if slot.stream is not None and slot.since_ckpt and not slot.moved:
                    self._checkpoint(slot)
        while self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self._pool.shutdown(wait=True)

    # ---- registry --------------------------------------------------------------------
    def _start(self):
        """Bind to the running loop and start the batch loop and the sweeper, on first use."""
        if self._closed:
            raise RuntimeError("this Batcher is closed")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lstm-batcher")
        self._tasks = [self._loop.create_task(self._batches()), self._loop.create_task(self._sweep())]

    def _admit(self, key):
        if len(self._slots) >= self.max_streams:
            self._counts["overloaded"] += 1
            raise Overloaded(f"{len(self._slots)} streams are open (max_streams); {key!r} was not opened")

    def _new_slot(self, key, state=None, received=None) -> _Slot:
        self._start()
        self._admit(key)
        now = time.perf_counter()
        if self.store is None:
            slot = _Slot(key, self._open_stream(state), now)
        else:  # the key is claimed in the store first, whatever the state
            slot = _Slot(key, None, now)
            slot.loading = self._loop.create_task(self._resume(slot, state, received))
            slot.loading.add_done_callback(_retrieved)  # a failure reaches the frames and callers waiting
        self._slots[key] = slot
        return slot

    def _open_stream(self, state):
        if isinstance(state, (bytes, bytearray, memoryview)):
            return self.engine.restore(state)
        return self.engine.open_stream(state=state)

    async def _resume(self, slot, state, received):
        """Claim `slot`'s key in the store; continue at `state`, else from its checkpoint."""
        try:
            earlier = self._leaving.get(slot.key)
            if earlier is not None:  # its previous life's last checkpoint comes first
                await asyncio.gather(earlier, return_exceptions=True)
            slot.epoch, slot.ckpt_seq, blob = await self.store.load(slot.key, received)
            if state is None:
                slot.seq = slot.ckpt_seq
                slot.resumed = blob is not None
                slot.stream = self._open_stream(blob)
            else:  # a new life of the key, from `state`, stored at once as its origin
                slot.ckpt_seq = None
                slot.stream = self._open_stream(state)
                self._checkpoint(slot)
        except BaseException as e:  # the frames queued meanwhile fail with it; the key is free again
            self._slots.pop(slot.key, None)
            for _, fut, _, _ in slot.pending:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError("resume was cancelled"))
            slot.pending.clear()
            raise
        finally:
            slot.loading = None
        if slot.pending:
            self._make_ready(slot, slot.pending[0][2])

    def _remove(self, slot) -> bytes:
        """The idle `slot`'s snapshot, its key freed."""
        blob = slot.stream.snapshot()
        del self._slots[slot.key]
        if slot.last_batch == self._batch_no:  # the batch loop no longer waits for its next frame
            self._missing -= 1
        return blob

    async def _sweep(self):
        """Evict streams idle for idle_timeout_s, looking a few times per timeout."""
        if self.idle_timeout_s is None:
            return
        while True:
            await asyncio.sleep(min(self.idle_timeout_s / 4, 1.0))
            cutoff = time.perf_counter() - self.idle_timeout_s
            while self._slots:
                slot = next(iter(self._slots.values()))
                if slot.last > cutoff:
                    break
                if slot.pending or slot.busy or slot.closing or slot.loading is not None:
                    slot.last = time.perf_counter()  # not idle: closing, or waiting on a batch or the store
                    self._slots.move_to_end(slot.key)
                    continue
                await self._evict(slot)

    async def _evict(self, slot):
        blob = self._remove(slot)
        self._counts["evicted"] += 1
        if self.store is not None:
            if slot.since_ckpt and not slot.moved:
                self._write_last(slot, blob)  # in the background: the sweep goes on
            elif slot.write is not None and not slot.write.done():  # its state is on its way
                self._leaving_until(slot.key, slot.write)
        elif self.on_evict is not None:
            done = self.on_evict(slot.key, blob)
            if inspect.isawaitable(done):
                await done

    def _write_last(self, slot, blob) -> asyncio.Future:
        """Write the last checkpoint of the removed `slot` (None: delete its key); a new
        stream of its key loads only after it."""
        return self._leaving_until(slot.key, self._write(slot, slot.seq, blob))

    def _leaving_until(self, key, write):
        """Reopening `key` waits for `write` to land."""
        self._leaving[key] = write

        def done(_):
            if self._leaving.get(key) is write:
                del self._leaving[key]

        write.add_done_callback(done)
        return write

    # ---- frames and batches -------------------------------------------------------------
    def _frame(self, x):
        """x as a row of step_many's X: a float32 frame of the model's input width, or a
        token id. Whatever the engine refuses beyond this (NaN, ids out of range) it
        refuses for the batch, and _step_each narrows that down."""
        if self._tokens:
            if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
                return x
            a = numeric("x", x)
            if a.dtype.kind not in "iu" or a.size != 1:
                raise ValueError(f"x: token model expects one integer id, got {a.dtype} shape {a.shape}")
            return a.reshape(())[()]
        a = numeric("x", x)
        if a.shape != self._xshape:
            raise ValueError(f"x: expected shape {self._xshape}, got {a.shape}")
        return kernel_array(a)

    def _make_ready(self, slot, arrival):
        """`slot` has a queued frame now: it joins the next batch, which may close sooner."""
        ready = self._ready
        if not ready:
            self._oldest = arrival
        ready.append(slot)
        if slot.last_batch == self._batch_no:
            self._missing -= 1
        if self._waiter is not None and (len(ready) == 1 or self._missing <= 0 or len(ready) >= self.max_batch):
            self._wake()

    def _wake(self):
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _closes(self) -> bool:
        """Whether the next batch closes now (the engine is free whenever this is asked)."""
        ready = self._ready
        return bool(ready) and (self._missing <= 0 or len(ready) >= self.max_batch or self._closed)

    async def _batches(self):
        loop = self._loop
        while True:
            while not self._closes():
                if self._closed and not self._ready:
                    return
                handle = None
                if self._ready:
                    deadline = self._oldest + self.max_wait_ms / 1e3
                    delay = deadline - time.perf_counter()
                    if delay <= 0:
                        break
                    handle = loop.call_later(delay, self._wake)
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                    if handle is not None:
                        handle.cancel()
            await self._run(*self._take())

    def _take(self):
        """The next batch: the oldest queued frame of up to max_batch ready streams."""
        ready = self._ready
        slots, frames = [], []
        self._batch_no += 1
        missing = 0
        for _ in range(min(len(ready), self.max_batch)):
            slot = ready.popleft()
            frame = slot.pending.pop(0)
            fut = frame[1]
            refused = None
            if slot.seq is not None and not fut.cancelled():
                refused = self._out_of_order(slot, frame[3])
                if refused is not None:
                    fut.set_exception(refused)
            if fut.cancelled() or refused is not None:  # withdrawn by its caller, or refused: never applied
                if slot.pending:
                    ready.append(slot)
                else:
                    self._settle(slot)
                continue
            slot.busy = True
            slot.last_batch = self._batch_no
            if slot.pending:
                ready.append(slot)  # its next frame goes in the next batch
            else:
                missing += 1
            slots.append(slot)
            frames.append(frame)
        self._missing = missing
        if ready:
            self._oldest = min(s.pending[0][2] for s in ready)
        return slots, frames

    async def _run(self, slots, frames):
        n = len(slots)
        if not n:
            return
        X = self._X[:n]
        if self._tokens:
            X[:] = [f[0] for f in frames]
        else:
            np.stack([f[0] for f in frames], out=X)
        self._waits.add(time.perf_counter(), [f[2] for f in frames])
        streams = [s.stream for s in slots]
        try:
            Y, errors = await self._loop.run_in_executor(self._pool, self._step_each, streams, X)
        except Exception as e:  # not a frame's fault (a bug): every caller of the batch hears it
            Y, errors = None, dict.fromkeys(range(n), e)
        except BaseException:  # cancelled: the loop is going away
            for slot in slots:
                slot.busy = False
            raise
        c = self._counts
        c["batches"] += 1
        c["frames"] += n - len(errors)
        c["failed"] += len(errors)
        outcomes = [None] * n if Y is None else list(Y)
        for i, err in errors.items():
            outcomes[i] = err
        for slot, (_, fut, _, seq), y in zip(slots, frames, outcomes):
            slot.busy = False
            if y.__class__ is np.ndarray:
                if seq is not None:
                    slot.seq = seq
                slot.resumed = False
                slot.since_ckpt += 1
                if not fut.done():
                    fut.set_result(y)
            elif not fut.done():
                fut.set_exception(y)
        if self._closing or self.checkpoint_every:
            room = CHECKPOINTS_PER_BATCH
            for slot in slots:
                if slot.closing:
                    self._settle(slot)
                elif self.checkpoint_every and slot.since_ckpt >= self.checkpoint_every and room:
                    room -= 1
                    self._checkpoint(slot)

    @staticmethod
    def _out_of_order(slot, seq):
        """Why frame `seq` cannot be applied to `slot` (whose frames have seqs) now, or None."""
        if seq is None:  # its checkpoints would carry the seq of an earlier frame
            return ValueError(f"stream {slot.key!r} numbers its frames (latest {slot.seq}): a frame needs a seq")
        if seq <= slot.seq:  # a frame the stream has: a replay from too early
            return ValueError(f"frame seq {seq} of stream {slot.key!r} is not after its latest frame's {slot.seq}")
        if slot.resumed and seq != slot.seq + 1:  # the frames between its checkpoint and this one are missing
            return Moved(f"stream {slot.key!r} resumed from its checkpoint at seq {slot.seq}: frame {seq} needs "
                         f"the frames after {slot.seq} first (resume_seq, then replay)")
        return None

    @staticmethod
    def _settle(slot):
        """Tell a close() waiting on `slot` that its queued frames are done."""
        if slot.drained is not None and not slot.pending and not slot.busy and not slot.drained.done():
            slot.drained.set_result(None)

    def _step_each(self, streams, X):
        """step_many on the worker thread. One refused frame refuses the whole call and
        changes no stream, so a refusal is narrowed down by halves to the frames that
        cause it, and the others run: returns (Y, {row: ValueError})."""
        try:
            return self.engine.step_many(streams, X), {}
        except ValueError as e:
            if len(streams) == 1:
                return None, {0: e}
        Y = np.empty((len(streams), self.engine.model.output_size), F32)
        errors = {}
        half = len(streams) // 2
        for lo, hi in ((0, half), (half, len(streams))):
            y, errs = self._step_each(streams[lo:hi], X[lo:hi])
            if y is not None:
                Y[lo:hi] = y
            errors.update((lo + i, err) for i, err in errs.items())
        return Y, errors

    def _checkpoint(self, slot):
        """Queue `slot`'s state for the store (the next batch may run meanwhile)."""
        slot.since_ckpt = 0
        self._counts["checkpoints"] += 1
        slot.write = self._write(slot, slot.seq, slot.stream.snapshot())

    # ---- the store's writer --------------------------------------------------------------
    def _write(self, slot, seq, blob) -> asyncio.Future:
        """Queue a write of `slot`'s key (blob None: delete it); the future says whether
        the store accepted it."""
        old = self._outbox.pop(slot.key, None)
        fut = self._loop.create_future()
        waiting = [fut] if old is None else old.waiting + [fut]  # a replaced write's waiters hear of this one
        self._outbox[slot.key] = _Write(slot, seq, blob, waiting)
        if self._writer is None:
            self._writer = self._loop.create_task(self._send())
        return fut

    async def _send(self):
        """Send the outbox, one write_many at a time: what is queued meanwhile goes in
        the next, so writes reach the store in the order they were made."""
        try:
            while self._outbox:
                writes = [self._outbox.pop(k) for k in list(itertools.islice(self._outbox, STORE_BATCH))]
                try:
                    accepted = await self.store.write_many([(w.slot.key, w.epoch, w.seq, w.blob) for w in writes],
                                                           self._keep_behind)
                except Exception as err:  # the store is unreachable: frames go on, writes are retried
                    self._counts["store_errors"] += 1
                    now = time.monotonic()
                    failing = 0.0
                    for w in writes:
                        if w.failing_since is None:
                            w.failing_since = now
                        failing = max(failing, now - w.failing_since)
                        newer = self._outbox.get(w.slot.key)
                        if newer is not None:  # a newer write of the key replaces this one
                            newer.waiting += w.waiting
                        elif now - w.failing_since < STORE_PATIENCE_S:
                            self._outbox[w.slot.key] = w
                        else:
                            for fut in w.waiting:
                                if not fut.done():
                                    fut.set_exception(err)
                                    fut.exception()  # retrieved: nobody may be waiting on it
                    await asyncio.sleep(min(2.0, 0.1 + failing))
                    continue
                self._counts["store_writes"] += 1
                for w, ok in zip(writes, accepted):
                    if ok and w.blob is not None:
                        w.slot.ckpt_seq = w.seq
                    elif not ok and not w.slot.moved:  # another worker claimed the key
                        w.slot.moved = True
                        self._counts["moved"] += 1
                    for fut in w.waiting:
                        if not fut.done():
                            fut.set_result(ok)
        finally:
            self._writer = None
