"""`Engine` (packed weights, shared by streams) and `Stream` (one (h, c) state).

All checking happens here, once, at the boundary; the kernels trust what they get.
A call that raises leaves every state exactly as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import warnings

import numba
import numpy as np

from . import snapshot
from .errors import ModelError
from .inputs import F32, array, kernel_array, nonfinite, numeric
from .kernels.layout import HD_IN, HD_OUT, HD_ST_Y
from .kernels.lstm import BADSHAPE, NONFINITE, _run, _step, _step_many
from .model import Model
from .packing import PRECISIONS as _PANEL_DTYPES
from .packing import aligned_zeros, pack

PRECISIONS = tuple(_PANEL_DTYPES)
_ndarray = np.ndarray  # bound once: Stream.step's check saves a module attribute lookup
PARALLEL_MIN_WEIGHTS = 100_000  # a layer with fewer weights runs faster on one thread (H=64: 0.78x)


def _worth_threads(model) -> bool:
    return max(d.W.size + d.R.size for _, _, _, d in model.cells()) >= PARALLEL_MIN_WEIGHTS


def _own_copy(model: Model) -> Model:
    """A deep copy of `model`, built again through Model's constructor, which validates it:
    the engine then reads no array its caller can still change and trusts no check made
    before (DESIGN §7). Nothing the original cached (its fingerprint) carries over."""
    return dataclasses.replace(copy.deepcopy(model))


def _busy() -> RuntimeError:
    return RuntimeError("this Stream is in use by another thread: a stream takes one call at a "
                        "time (serialise its calls, or give each thread its own stream); nothing "
                        "was changed")


# A stream's lock is a list that holds one token while no call uses the stream: pop()
# takes it or fails at once, append() gives it back; each is one atomic C call (under the
# GIL, or the list's own lock without one). A pair costs ~25 ns, threading.Lock's
# acquire(False) and release() ~120 ns.
def _claim(tokens) -> None:
    """Take every stream's token without waiting, or none of them and raise _busy()."""
    for k, token in enumerate(tokens):
        try:
            token.pop()
        except IndexError:
            for held in tokens[:k]:
                held.append(None)
            raise _busy() from None


class Engine:
    """Runs one Model; holds its packed weights, shared by every Stream it opens.

    precision: "fp32"; "bf16": W and R rounded to bfloat16, half the bytes streamed per
    step; "int8": W and R as int8 with one float32 scale per gate row, a quarter of the
    bytes, widened to float32 (x and h stay float32); "int8-dynamic": the same int8
    weights times x and h rounded to uint8 per frame and stream (one scale each), in
    integer dot products (vpdpbusd where the CPU has VNNI). Everything else stays float32.
    threads: cores that split each layer's hidden units. A parallel region costs a
    few µs, so models whose layers are too small to gain keep to one thread
    (`Engine.threads` says what is used).
    `model` is the engine's own validated copy of the model it was given.
    An Engine pickles (and deep-copies) as its model and arguments, and is rebuilt.
    """

    def __init__(self, model: Model, precision: str = "fp32", threads: int = 1):
        if not isinstance(model, Model):
            raise TypeError(f"Engine needs an lstm_engine.Model, got {type(model).__name__}; "
                            "use lstm_engine.load(path) or converters.from_onnx/from_torch")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not available; choose from {PRECISIONS}")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads={threads!r}: expected a whole number >= 1")
        m = self.model = _own_copy(model)
        self.precision = precision
        self._threads_asked = int(threads)
        # no more than numba's pool holds (the cores, unless NUMBA_NUM_THREADS says less)
        self.threads = min(self._threads_asked, numba.config.NUMBA_NUM_THREADS) if _worth_threads(m) else 1
        p = self._packed = pack(m, self.threads, precision)
        # what the boundary checks against, fixed now: engine.model is reachable, the
        # kernels read only what was packed
        self._in, self._out = int(p.meta[0, HD_IN]), int(p.meta[0, HD_OUT])
        # token rows go to the step kernel as they are: its one array type (inputs.py)
        self._emb = None if m.embedding is None else np.require(m.embedding.weight, F32, "CAW")
        self._sizes = tuple(m.state_sizes)
        self._layout = m.layout
        self._reverse = [i for i, layer in enumerate(m.layers) if layer.direction != "forward"]
        self._warm()

    def __reduce__(self):
        # packed weights and streams' buffers belong to a process: rebuild from the model
        return Engine, (self.model, self.precision, self._threads_asked)

    @property
    def _fingerprint(self) -> bytes:
        """The model's sha256, for snapshots; hashing every weight waits until needed."""
        return bytes.fromhex(self.model.fingerprint())

    def _warm(self):
        """Compile (or load from numba's cache) every kernel, for the one array type the
        boundary hands it (inputs.py), before the first real call."""
        p = self._packed
        frame = np.zeros(self._in, F32)
        self._step_entry = None
        if not self._reverse:
            args = (frame, p.wp, p.meta, aligned_zeros(p.stream_len))
            _step(*args)
            # Stream.step calls the compiled step for exactly these argument types
            # without the dispatcher (0.2 us of a 2.5 us step at H=64): numba's entry
            # point trusts its arguments' types, and the boundary hands it exactly
            # this one (inputs.py) and the engine's own weights and buffers
            self._step_entry = _step.overloads[tuple(numba.typeof(a) for a in args)].entry_point
            _step_many(np.zeros((0, self._in), F32), p.wp, p.meta, np.zeros(0, np.int64),
                       np.zeros((0, self._out), F32))
        h = np.zeros((1, p.ncell, p.pmax), F32)
        c = np.zeros((1, p.ncell, p.hmax), F32)
        y = np.zeros((1, 1, self._out), F32)
        _run(frame[None, None], np.ones(1, np.int64), p.wp, p.meta, h, c, y)
        if self.threads > 1:
            if numba.threading_layer() == "workqueue":
                warnings.warn("numba runs threads=N on its workqueue layer, which is not thread-safe: "
                              "do not step this engine's streams from several Python threads at once "
                              "(installing tbb, or an OpenMP runtime, lifts this)", RuntimeWarning, stacklevel=3)

    # ---- streams ------------------------------------------------------------
    def open_stream(self, state=None) -> "Stream":
        """A Stream at zero state, or at state=(h, c) (lists per cell, state order)."""
        self._require_streamable()
        s = Stream(self)
        if state is not None:
            h, c = self._state_arrays(state, batch=None)
            s._h[:], s._c[:] = h, c
        return s

    def restore(self, blob: bytes) -> "Stream":
        """A Stream that continues where the one that made `blob` (Stream.snapshot) was."""
        self._require_streamable()
        p = self._packed
        state = snapshot.decode(blob, self._fingerprint, p.state_len)
        s = Stream(self)
        s._st[:p.state_len] = state
        return s

    def step_many(self, streams, X) -> np.ndarray:
        """One frame for each of N streams of this engine in one call: X (N, I) frames, or
        (N,) token ids, row i for streams[i]; returns the outputs (N, O).

        Every weight is read once for all N streams (two matrix products per layer), so
        this costs far less than N steps; each stream ends exactly as its own step() would
        leave it. Streams must be distinct, and none in use by another thread; on any
        error none of them changes.
        """
        self._require_streamable()
        try:
            streams = list(streams)
        except TypeError:
            raise TypeError(f"streams: expected a sequence of Streams, got {type(streams).__name__}") from None
        N = len(streams)
        try:  # the common case in one pass; a failure is located below
            addrs = [s._addr for s in streams if s._engine is self]
        except AttributeError:
            addrs = []
        if len(addrs) != N:
            i = next(i for i, s in enumerate(streams) if not isinstance(s, Stream) or s._engine is not self)
            raise ValueError(f"streams[{i}]: not a Stream opened on this engine (open_stream or restore on it)")
        if len(set(addrs)) != N:
            raise ValueError("streams: a stream appears more than once (it would step twice at once)")
        if self._emb is not None:
            if np.ndim(X) != 1:
                raise ValueError(f"X: token model expects ids shaped (N,), got shape {np.shape(X)}")
            X = self._frames(X, "X", allow_batch=False)
            if X.shape[0] != N:
                raise ValueError(f"X: expected {N} token ids for {N} streams, got {X.shape[0]}")
        else:
            X = numeric("X", X)
            if X.shape != (N, self._in):
                raise ValueError(f"X: expected shape ({N}, {self._in}) for {N} streams, got {X.shape}")
            X = kernel_array(X)
        Y = np.empty((N, self._out), F32)
        if not N:
            return Y
        tokens = [s._token for s in streams]
        _claim(tokens)
        try:
            r = _step_many(X, self._packed.wp, self._packed.meta, np.array(addrs, np.int64), Y)
        finally:
            for token in tokens:
                token.append(None)
        if r == NONFINITE:
            raise nonfinite("X")
        return Y

    def _require_streamable(self):
        if self._reverse:
            raise ModelError(f"layers {self._reverse} run in reverse, which needs the whole sequence: "
                             "this model cannot be streamed; use Engine.run(X) instead")

    # ---- offline --------------------------------------------------------------
    def run(self, X, state=None, lengths=None):
        """Whole sequences, any direction.

        X: (T, I) or batched (T, B, I) ((B, T, I) when model.layout == 1); token
           models take ids, (T,) or (T, B) / (B, T).
        state: (h, c), lists per cell of (P,)/(H,) arrays, or (B, P)/(B, H) when batched.
        lengths: valid frames per sequence, (B,) ints in [0, T]; frames past a length
           give zero layer output and leave the state alone.
        Returns Y ((T, O), (T, B, O) or (B, T, O)) and (h, c) shaped like `state`.
        """
        p = self._packed
        X = self._frames(X, "X", allow_batch=True)
        batched = X.ndim == 3
        if not batched:
            X = X[None]
        B, T = X.shape[:2]
        if lengths is None:
            lens = np.full(B, T, np.int64)
        else:
            lens = numeric("lengths", lengths)
            if lens.dtype.kind not in "iu" or (lens.shape != (B,) if batched else lens.size != 1):
                raise ValueError(f"lengths: expected {B} integer(s), got {lens.dtype} shape {lens.shape}")
            lens = lens.reshape(B).astype(np.int64)
            if (lens < 0).any() or (lens > T).any():
                raise ValueError(f"lengths: every value must be in [0, {T}], got {lens.tolist()}")
        if state is None:
            h = np.zeros((B, p.ncell, p.pmax), F32)
            c = np.zeros((B, p.ncell, p.hmax), F32)
        else:  # fresh arrays: the kernel updates them in place
            h, c = self._state_arrays(state, batch=B if batched else None)
        Y = np.empty((B, T, self._out), F32)
        if _run(X, lens, p.wp, p.meta, h, c, Y) == NONFINITE:
            raise nonfinite("X")
        hl = [h[:, k, :P] for k, (P, _) in enumerate(self._sizes)]
        cl = [c[:, k, :H] for k, (_, H) in enumerate(self._sizes)]
        if not batched:
            return Y[0], ([a[0].copy() for a in hl], [a[0].copy() for a in cl])
        Y = Y.transpose(1, 0, 2) if self._layout == 0 else Y
        return np.ascontiguousarray(Y), ([a.copy() for a in hl], [a.copy() for a in cl])

    # ---- boundary checks ---------------------------------------------------
    def _frames(self, X, name, allow_batch):
        """X as the kernels' float32 frames (T, I), or with allow_batch also a batch, which
        comes back batch-first, (B, T, I), whatever the model's layout; converted in one
        copy at most. Token ids, (T,) or (T, B), go through the embedding table."""
        if self._emb is not None:
            ids = numeric(name, X)
            if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
                raise ValueError(f"{name}: token model expects integer ids shaped (T,) or "
                                 f"(T, B), got {ids.dtype} shape {ids.shape}")
            V = self._emb.shape[0]
            if ids.size and (ids.min() < 0 or ids.max() >= V):
                raise ValueError(f"{name}: token ids must be in [0, {V}), got values in "
                                 f"[{ids.min()}, {ids.max()}]")
            return self._emb[self._batch_first(ids, 2)]  # a fresh C array
        a = numeric(name, X)
        I = self._in
        ok = a.ndim in (2, 3) if allow_batch else a.ndim == 2
        if not ok or a.shape[-1] != I:
            want = "(T, %d) or (T, B, %d)" % (I, I) if allow_batch else "(T, %d)" % I
            raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
        return kernel_array(self._batch_first(a, 3))

    def _batch_first(self, a, batched_ndim):
        """A view of `a` with the batch axis first, when it is batched and layout 0 puts
        time first; converting after this view copies once."""
        return a.swapaxes(0, 1) if a.ndim == batched_ndim and self._layout == 0 else a

    def _state_arrays(self, state, batch):
        """(h, c) lists -> (B or 1, ncell, PMAX/HMAX) float32 arrays, checked."""
        p = self._packed
        sizes = self._sizes
        try:
            h_list, c_list = state
            h_list, c_list = list(h_list), list(c_list)
        except (TypeError, ValueError):
            raise ValueError("state: expected (h, c), two lists with one array per "
                             f"(layer, direction): {len(sizes)} each") from None
        if len(h_list) != len(sizes) or len(c_list) != len(sizes):
            raise ValueError(f"state: expected {len(sizes)} arrays in h and in c, got "
                             f"{len(h_list)} and {len(c_list)}")
        B = 1 if batch is None else batch
        h = np.zeros((B, p.ncell, p.pmax), F32)
        c = np.zeros((B, p.ncell, p.hmax), F32)
        for k, (P, H) in enumerate(sizes):
            for name, src, dst, n in (("h", h_list, h, P), ("c", c_list, c, H)):
                a = numeric(f"state {name}[{k}]", src[k])
                want = (n,) if batch is None else (batch, n)
                if a.shape != want:
                    raise ValueError(f"state {name}[{k}]: expected shape {want}, got {a.shape}")
                if not np.isfinite(a).all():
                    raise nonfinite(f"state {name}[{k}]")
                dst[:, k, :n] = a
        return h, c


def _exclusive(method):
    """Run `method` holding the stream's lock (_claim), taken without waiting: a second
    thread gets RuntimeError instead of a silently diverging state."""
    @functools.wraps(method)
    def call(self, *args):
        _claim((self._token,))
        try:
            return method(self, *args)
        finally:
            self._token.append(None)

    return call


class Stream:
    """The (h, c) state of one stream of frames and the scratch its steps use.

    Different Streams may be stepped from different threads at once (kernels release
    the GIL); one Stream takes one call at a time, a second one raises RuntimeError.
    A Stream belongs to its Engine and process: it cannot be copied or pickled
    (snapshot() and Engine.restore move its state).
    """

    __slots__ = ("_engine", "_wp", "_meta", "_st", "_addr", "_h", "_c", "_y", "_emb", "_xshape", "_token", "_kernel")

    def __init__(self, engine: Engine):
        p = engine._packed
        self._engine = engine
        self._wp, self._meta = p.wp, p.meta
        self._st = aligned_zeros(p.stream_len)  # vector stores to its scratch stay within cache lines
        self._addr = self._st.ctypes.data  # for Engine.step_many; the buffer lives as long as the Stream
        n_h = p.ncell * p.pmax
        self._h = self._st[:n_h].reshape(1, p.ncell, p.pmax)
        self._c = self._st[n_h:p.state_len].reshape(1, p.ncell, p.hmax)
        y0 = int(p.meta[0, HD_ST_Y])
        self._y = self._st[y0:y0 + engine._out]
        self._emb = engine._emb
        self._xshape = (engine._in,)
        self._token = [None]  # the stream's lock: see _claim
        self._kernel = engine._step_entry

    def __reduce__(self):
        # a copy would share, or (in another process) dangle at, the buffer step_many writes to
        raise TypeError("a Stream cannot be copied or pickled: its state lives in its engine's "
                        "process; use blob = stream.snapshot() and engine.restore(blob) (an Engine "
                        "pickles)")

    def step(self, x) -> np.ndarray:
        """One frame (I,) -- or one token id -- in, the output (O,) out."""
        # a float32 frame the kernel takes as it is costs these checks only; anything
        # else is converted once (the kernel checks the width and finiteness)
        if self._emb is not None or not (type(x) is _ndarray and x.dtype is F32 and x.ndim == 1
                                         and x.flags.carray):
            x = self._frame(x)
        try:  # _exclusive, inline: two calls less a step
            self._token.pop()
        except IndexError:
            raise _busy() from None
        try:
            r = self._kernel(x, self._wp, self._meta, self._st)
            if r == BADSHAPE:
                raise self._bad_shape(x)
            if r:
                raise nonfinite("x")
            return self._y.copy()
        finally:
            self._token.append(None)

    @_exclusive
    def run(self, X) -> np.ndarray:
        """A chunk of frames (T, I) -- or token ids (T,) -- in, outputs (T, O) out."""
        e = self._engine
        if self._emb is not None and np.ndim(X) != 1:
            raise ValueError(f"X: token model expects ids shaped (T,), got shape {np.shape(X)}")
        X = e._frames(X, "X", allow_batch=False)
        T = X.shape[0]
        Y = np.empty((1, T, e._out), F32)
        if T == 0:  # the kernel would apply onnxruntime's empty-sequence rule (zero state)
            return Y[0]
        if _run(X[None], np.array([T], np.int64), self._wp, self._meta, self._h, self._c, Y) \
                == NONFINITE:
            raise nonfinite("X")
        return Y[0]

    def _frame(self, x):
        """x, one frame or token id, as the frame _step takes (inputs.py)."""
        if self._emb is not None:
            return self._emb[self._token_id(x)]  # a row of a C array: the kernel's type
        a = numeric("x", x)
        if a.shape != self._xshape:
            raise self._bad_shape(a)
        return kernel_array(a)

    def _bad_shape(self, a):
        return ValueError(f"x: expected shape {self._xshape}, got {np.shape(a)}")

    def _token_id(self, x) -> int:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            a = array("x", x)
            if a.dtype.kind not in "iu" or a.size != 1:
                raise ValueError(f"x: token model expects one integer id, got "
                                 f"{type(x).__name__} {a.dtype} shape {a.shape}")
            x = a.reshape(())[()]
        V = self._emb.shape[0]
        if not 0 <= x < V:
            raise ValueError(f"x: token id {int(x)} is outside [0, {V})")
        return int(x)

    @property
    @_exclusive
    def state(self):
        """(h, c): lists of 1-D float32 copies, one per (layer, direction)."""
        sizes = self._engine._sizes
        return ([self._h[0, k, :P].copy() for k, (P, _) in enumerate(sizes)],
                [self._c[0, k, :H].copy() for k, (_, H) in enumerate(sizes)])

    @_exclusive
    def reset(self) -> None:
        """Back to zero state."""
        self._st[:] = 0

    @_exclusive
    def snapshot(self) -> bytes:
        """The state as checksummed bytes, tagged with the model's fingerprint (Engine.restore)."""
        e = self._engine
        return snapshot.encode(e._fingerprint, self._st[:e._packed.state_len])
