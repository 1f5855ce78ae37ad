"""What each panel precision needs of its operands, chosen when numba types a call.

Float panels (float32, bf16, int8 weights-only) multiply float32 x and h as they are.
int8-dynamic panels (uint8, simd.py) multiply quantised rows: x rounded to u8 with a
zero point and one scale per row (frame, or stream), computed here once per product
for every row set that reads it. The kernels call these helpers for every precision;
numba compiles only the branch of the panel's dtype.
"""
import numba
import numpy as np
from numba import types
from numba.extending import overload

from .config import FLAGS
from .simd import I8_EXTRA, Q8_EXTRA, Q8_ZERO

_OPTS = {k: v for k, v in FLAGS.items() if k != "cache"}


def operand(p, x):
    """x (K,) as panel p multiplies it: x itself, or its quantised row (K4 + 4 bytes)."""


def operand_rows(p, a):
    """a (T, K) as panel p multiplies it: a itself, or its quantised rows (T, K4 + 4)."""


def columns(p, x):
    """The column count to hand the kernels for operand x (or rows a) of panel p."""


def group_cols(p, K):
    """Elements of panel p per row of a group of K columns (simd.py's layouts)."""


def _is_q8(p):
    return isinstance(p, types.Array) and p.dtype == types.uint8


@overload(operand, jit_options=_OPTS)
def _operand(p, x):
    if not _is_q8(p):
        return lambda p, x: x

    def quantised(p, x):
        if x.shape[0] == 0:  # no x: a chunk's W.x is computed beforehand
            return np.empty(0, np.uint8)
        out = np.empty(((x.shape[0] + 3) & -4) + 4, np.uint8)
        _quantise_row(x, out)
        return out
    return quantised


@overload(operand_rows, jit_options=_OPTS)
def _operand_rows(p, a):
    if not _is_q8(p):
        return lambda p, a: a

    def quantised(p, a):
        out = np.empty((a.shape[0], ((a.shape[1] + 3) & -4) + 4), np.uint8)
        for t in range(a.shape[0]):
            _quantise_row(a[t], out[t])
        return out
    return quantised


@overload(columns, jit_options=_OPTS)
def _columns(p, x):
    if _is_q8(p):
        return lambda p, x: x.shape[-1] - 4 if x.shape[-1] > 0 else 0  # K4, the quads the kernel reads
    return lambda p, x: x.shape[-1]


@overload(group_cols, jit_options=_OPTS)
def _group_cols(p, K):
    if _is_q8(p):
        return lambda p, K: ((K + 3) & -4) + Q8_EXTRA
    if isinstance(p, types.Array) and p.dtype == types.int8:
        return lambda p, K: K + I8_EXTRA
    if isinstance(p, types.Array) and p.dtype == types.uint16:
        return lambda p, K: K + (K & 1)
    return lambda p, K: K


@numba.njit(**dict(_OPTS, fastmath=False, cache=True))  # exact IEEE: the same bits wherever it is inlined
def _quantise_row(x, out):
    """out[:K] = round(x / s) + Q8_ZERO (K4 - K zeros after), out[K4:K4 + 4] = s as
    float32 bytes, with s = max|x| / 127 (1 for a row of zeros)."""
    K = x.shape[0]
    amax = np.float32(0.0)
    for k in range(K):
        amax = max(amax, abs(x[k]))
    s = amax / np.float32(127.0) if amax > 0 else np.float32(1.0)
    inv = np.float32(1.0) / s
    for k in range(K):
        out[k] = np.uint8(np.int32(np.rint(x[k] * inv)) + Q8_ZERO)
    k4 = out.shape[0] - 4
    for k in range(K, k4):
        out[k] = Q8_ZERO
    out[k4:].view(np.float32)[0] = s

