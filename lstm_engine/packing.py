"""Canonical `Model` weights -> the flat buffers the kernels read.

`ws` (float32, 1-D) holds every weight; each section starts on a 64-byte boundary.
The W and R panels sit in it in the engine's precision; `wp` views ws as their dtype
(float32, uint16 for bf16, int8), and their offsets count its elements.
`meta` (int64, (1 + cells, fields)) says where each section is and what the cell does;
field names and the gate-row order live in kernels/layout.py.
"""
from dataclasses import dataclass

import numpy as np

from .kernels import layout as L
from .kernels.isa import cache_bytes
from .kernels.linalg import PAIR, QUAD
from .kernels.pointwise import (
    HEAD_LOGSOFTMAX,
    HEAD_NONE,
    HEAD_RELU,
    HEAD_SIGMOID,
    HEAD_SOFTMAX,
    HEAD_TANH,
)
from .kernels.simd import BF16, F32, GROUP, I8, Q8

_HEAD_CODES = {None: HEAD_NONE, "Softmax": HEAD_SOFTMAX, "LogSoftmax": HEAD_LOGSOFTMAX,
               "Sigmoid": HEAD_SIGMOID, "Tanh": HEAD_TANH, "Relu": HEAD_RELU}
_ALIGN = 16  # floats per 64 bytes
_PAGE = 4096  # bytes
# weights read per product above half the host's L3 come from memory: walk four panel
# groups at once there (Zen 3, AVX2: H=1024 step 941 -> 822 us; Emerald Rapids, AVX-512:
# equal either way at H=512 and 1024)
WIDE_BYTES = cache_bytes(3, 32 << 20) // 2
PRECISIONS = {"fp32": F32, "bf16": BF16, "int8": I8, "int8-dynamic": Q8}  # name -> dtype of the panels (simd.py)
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "int8": 1, "int8-dynamic": 1}


@dataclass(frozen=True)
class Packed:
    ws: np.ndarray  # (n,) float32: every weight of the model
    wp: np.ndarray  # ws viewed as the W and R panels' dtype (simd.py)
    meta: np.ndarray  # (1 + cells, C_FIELDS) int64
    ncell: int
    pmax: int  # row stride of h in state arrays
    hmax: int  # row stride of c in state arrays

    @property
    def stream_len(self) -> int:
        return int(self.meta[0, L.HD_ST_LEN])

    @property
    def state_len(self) -> int:
        """Floats of (h, c) at the front of a streaming buffer."""
        return self.ncell * (self.pmax + self.hmax)


def gate_row_order(H: int, block: int = L.BLOCK) -> np.ndarray:
    """perm[packed row] = canonical row (gate-major i, o, f, c over all H units)."""
    perm = np.empty(4 * H, np.int64)
    for u0 in range(0, H, block):
        w = min(block, H - u0)
        for q in range(4):
            perm[4 * u0 + q * w:4 * u0 + (q + 1) * w] = q * H + np.arange(u0, u0 + w)
    return perm


def to_panel(a: np.ndarray, Rp: int) -> np.ndarray:
    """(R, K) rows -> the panel layout of kernels/simd.py: rows padded with zeros to
    Rp (a multiple of GROUP), cut into groups of GROUP rows, each group stored k-major."""
    R, K = a.shape
    padded = np.zeros((Rp, K), np.float32)
    padded[:R] = a
    return np.ascontiguousarray(padded.reshape(Rp // GROUP, GROUP, K).transpose(0, 2, 1)).ravel()


class _Buffer:
    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, a) -> int:
        """Floats, or a bf16 / int8 panel as its raw bytes, from the next 64 bytes on;
        returns where they start, in float32 slots."""
        a = np.asarray(a)
        if a.dtype in (np.uint16, np.int8, np.uint8):
            raw = np.ascontiguousarray(a).ravel().view(np.uint8)
            a = np.concatenate([raw, np.zeros(-raw.size % 4, np.uint8)]).view(np.float32)
        a = np.ascontiguousarray(a, np.float32).ravel()
        off = self.size
        pad = -(off + a.size) % _ALIGN
        self.parts.append(a)
        if pad:
            self.parts.append(np.zeros(pad, np.float32))
        self.size += a.size + pad
        return off

    def array(self) -> np.ndarray:
        out = aligned_zeros(self.size, _PAGE)
        if self.parts:
            np.concatenate(self.parts, out=out)
        return out


def aligned_zeros(n: int, align: int = 64) -> np.ndarray:
    """n float32 zeros starting at a multiple of `align` bytes: numpy aligns to 16 bytes
    only, and a 64-byte vector load or store at offset 16 straddles two cache lines,
    every one. (Weights take a page; a stream's buffer a line, so that 10 000 streams
    do not pay up to a page each.)"""
    raw = np.zeros(n + align // 4, np.float32)
    start = -raw.ctypes.data % align // 4
    return raw[start:start + n]


def _whole_lines(n: int) -> int:
    """n floats rounded up to whole 64-byte lines, so the next section starts on one."""
    return -(-n // _ALIGN) * _ALIGN


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even; weights are finite."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 represents them (what a bf16 engine computes with)."""
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32).reshape(np.shape(a))


def quantize_rows(a: np.ndarray):
    """(R, K) float32 -> int8 q (R, K) and float32 scales (R,) with a[r] ~ q[r] * scale[r]:
    symmetric, per row, round to nearest even; a row of zeros gets scale 0."""
    a = np.asarray(a, np.float32)
    scale = (np.abs(a).max(axis=1, initial=0.0) / np.float32(127)).astype(np.float32)
    q = np.rint(a / np.where(scale > 0, scale, 1)[:, None])
    return np.clip(q, -127, 127).astype(np.int8), scale


def round_int8(a: np.ndarray) -> np.ndarray:
    """float32 rows as an int8 engine represents them: q * scale per row."""
    q, scale = quantize_rows(a)
    return q.astype(np.float32) * scale[:, None]


def int8_panel(a: np.ndarray, Rp: int) -> np.ndarray:
    """(R, K) rows -> the int8 panel layout of kernels/simd.py, as float32 slots: each
    group of GROUP rows holds its int8 weights k-major, then its GROUP float32 scales."""
    q, scale = quantize_rows(a)
    G = Rp // GROUP
    body = to_panel(q, Rp).astype(np.int8).reshape(G, -1)  # small integers: exact through float32
    sp = np.zeros(Rp, np.float32)
    sp[:len(scale)] = scale
    groups = np.concatenate([body, sp.reshape(G, GROUP).view(np.int8)], axis=1)
    return np.ascontiguousarray(groups).ravel().view(np.float32)  # GROUP * (K + 4) bytes a group


def bf16_panel(a: np.ndarray, Rp: int) -> np.ndarray:
    """(R, K) rows -> the bf16 panel layout of kernels/simd.py, as uint16: rows padded
    to Rp, columns to an even count; each group stores, pair by pair of columns, every
    row's (k, k+1)."""
    R, K = a.shape
    padded = np.zeros((Rp, K + K % 2), np.float32)
    padded[:R, :K] = a
    pairs = padded.reshape(Rp // GROUP, GROUP, -1, 2).transpose(0, 2, 1, 3)
    return bf16_bits(pairs).ravel()


def q8_panel(a: np.ndarray, Rp: int) -> np.ndarray:
    """(R, K) rows -> the int8-dynamic panel layout of kernels/simd.py, as uint8 bytes:
    per group of GROUP rows, the int8 weights (quantize_rows) as quads of columns
    (K padded to a multiple of 4), then GROUP float32 scales, then GROUP int32 row sums."""
    q, scale = quantize_rows(a)
    R, K = a.shape
    K4 = -(-K // 4) * 4
    G = Rp // GROUP
    padded = np.zeros((Rp, K4), np.int8)
    padded[:R, :K] = q
    body = padded.reshape(G, GROUP, K4 // 4, 4).transpose(0, 2, 1, 3).reshape(G, -1)
    sp = np.zeros(Rp, np.float32)
    sp[:R] = scale
    sums = padded.sum(axis=1, dtype=np.int32)
    tail = np.concatenate([sp.reshape(G, GROUP).view(np.int8), sums.reshape(G, GROUP).view(np.int8)], axis=1)
    return np.ascontiguousarray(np.concatenate([body, tail], axis=1)).ravel().view(np.uint8)


def panel(a: np.ndarray, Rp: int, prec: str) -> np.ndarray:
    """(R, K) rows -> their panel in precision prec (simd.py's dtype names), in the
    panel's own dtype."""
    if prec == Q8:
        return q8_panel(a, Rp)
    if prec == I8:
        return int8_panel(a, Rp).view(np.int8)
    if prec == BF16:
        return bf16_panel(a, Rp)
    return to_panel(a, Rp)


def pack(model, threads: int = 1, precision: str = "fp32") -> Packed:
    """Pack a validated Model; `threads` split each cell's blocks; precision "bf16" or
    "int8" stores the W and R panels that way (everything else stays float32)."""
    prec = PRECISIONS[precision]
    wbytes = WEIGHT_BYTES[precision]
    per_slot = 4 // wbytes  # panel elements per float32 slot of ws

    buf = _Buffer()
    cells = list(model.cells())
    meta = np.zeros((1 + len(cells), max(L.HD_FIELDS, L.C_FIELDS)), np.int64)
    meta[0, L.HD_THREADS] = threads
    # strides of h and c and the scratch offsets in whole lines: every cell's c, and the
    # gate scratch, start on one in a streaming buffer (Stream allocates it aligned)
    pmax = _whole_lines(max(layer.proj_size for _, _, layer, _ in cells))
    hmax = _whole_lines(max(layer.hidden_size for _, _, layer, _ in cells))
    for k, (li, rev, layer, d) in enumerate(cells):
        H, I, P = layer.hidden_size, layer.input_size, layer.proj_size
        perm = gate_row_order(H)
        cm = meta[1 + k]
        cm[L.C_LAYER], cm[L.C_REV] = li, int(rev)
        cm[L.C_I], cm[L.C_H], cm[L.C_P] = I, H, P
        wide = int((d.W.size + d.R.size) * wbytes > WIDE_BYTES) | int(d.R.size * wbytes > WIDE_BYTES) << 1
        rows = -(-4 * H // (QUAD if wide else PAIR)) * (QUAD if wide else PAIR)
        cm[L.C_W] = buf.add(panel(d.W[perm], rows, prec)) * per_slot
        cm[L.C_R] = buf.add(panel(d.R[perm], rows, prec)) * per_slot
        cm[L.C_ROWS], cm[L.C_WIDE] = rows, wide
        cm[L.C_B] = buf.add(d.b[perm])
        cm[L.C_PEEP] = buf.add(np.zeros(3 * H, np.float32) if d.peepholes is None else d.peepholes)
        cm[L.C_PROJ] = -1 if d.proj is None else buf.add(d.proj)
        f, g, h = d.activations
        clip = np.finfo(np.float32).max if layer.clip is None else layer.clip
        cm[L.C_PRM] = buf.add([f.alpha, f.beta, g.alpha, g.beta, h.alpha, h.beta, clip])
        cm[L.C_ACTF], cm[L.C_ACTG], cm[L.C_ACTH] = f.code, g.code, h.code
        cm[L.C_IFORGET] = int(layer.input_forget)
        cm[L.C_COL] = P if (layer.direction == "bidirectional" and rev) else 0
    hd = meta[0]
    hd[L.HD_NCELL], hd[L.HD_NLAYER], hd[L.HD_BLOCK] = len(cells), len(model.layers), L.BLOCK
    hd[L.HD_IN] = model.layers[0].input_size
    hd[L.HD_OUT] = model.output_size
    hd[L.HD_TOP] = model.layers[-1].output_size
    hd[L.HD_HEAD_W] = hd[L.HD_HEAD_B] = -1
    hd[L.HD_HEAD_ACT] = HEAD_NONE
    if model.head is not None:
        hd[L.HD_HEAD_W] = buf.add(model.head.weight)
        if model.head.bias is not None:
            hd[L.HD_HEAD_B] = buf.add(model.head.bias)
        hd[L.HD_HEAD_ACT] = _HEAD_CODES[model.head.activation]
    hd[L.HD_PMAX], hd[L.HD_HMAX] = pmax, hmax
    hd[L.HD_ST_G] = len(cells) * (pmax + hmax)
    hd[L.HD_ST_M] = hd[L.HD_ST_G] + threads * 4 * L.BLOCK
    hd[L.HD_ST_Y] = hd[L.HD_ST_M] + hmax
    hd[L.HD_ST_FLIP] = hd[L.HD_ST_Y] + model.output_size
    hd[L.HD_ST_LEN] = hd[L.HD_ST_FLIP] + 1
    ws = buf.array()
    return Packed(ws, ws.view(prec), meta, len(cells), pmax, hmax)
