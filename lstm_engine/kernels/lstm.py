"""The LSTM kernels: one cell step, one streaming frame, and whole sequences.

Every function takes arrays and integers only and trusts its inputs: the engine has
checked shapes, dtypes and finiteness of everything but the frames themselves, whose
finiteness is checked here, before any state is touched. Layout of `ws` and `meta`:
see layout.py.
"""
import numpy as np
from numba import prange

from .config import inline_kernel, kernel, parallel_kernel
from .layout import (
    C_ACTF,
    C_ACTG,
    C_ACTH,
    C_B,
    C_COL,
    C_H,
    C_IFORGET,
    C_LAYER,
    C_P,
    C_PEEP,
    C_PRM,
    C_PROJ,
    C_R,
    C_REV,
    C_ROWS,
    C_W,
    C_WIDE,
    HD_BLOCK,
    HD_HEAD_ACT,
    HD_HEAD_B,
    HD_HEAD_W,
    HD_HMAX,
    HD_IN,
    HD_NCELL,
    HD_NLAYER,
    HD_OUT,
    HD_PMAX,
    HD_ST_FLIP,
    HD_ST_G,
    HD_ST_LEN,
    HD_ST_M,
    HD_ST_Y,
    HD_THREADS,
    HD_TOP,
)
from .linalg import _gates, _gemm_panel, _gemm_panel_par, _matvec
from .pointers import _f32_at, _unowned
from .pointwise import _act_inplace, _head_act_inplace, _sigmoid, _tanh
from .quantize import operand, operand_rows
from .simd import WIDTH
from .update_ir import update_std

OK = 0
NONFINITE = 1  # an input frame holds NaN or inf; nothing was changed
BADSHAPE = 2  # a streaming frame is not as wide as the model's input; nothing was changed


@inline_kernel
def _w(wp, cm):
    """The panel of a cell's W (C_ROWS rows of I) in wp, the weights viewed as the panels'
    dtype (packing.Packed.wp); it runs to the end of wp: the kernels read only their rows."""
    return wp[cm[C_W]:]


@inline_kernel
def _r(wp, cm):
    """The panel of a cell's R (C_ROWS rows of P); see _w."""
    return wp[cm[C_R]:]


@inline_kernel
def _h_of(st, hd, cell, n):
    """The first n values of a cell's h in a streaming buffer (layout.py)."""
    return st[cell * hd[HD_PMAX]:cell * hd[HD_PMAX] + n]


@inline_kernel
def _c_of(st, hd, cell, n):
    """The first n values of a cell's c in a streaming buffer (layout.py)."""
    c0 = hd[HD_NCELL] * hd[HD_PMAX] + cell * hd[HD_HMAX]
    return st[c0:c0 + n]


@inline_kernel
def _cell_block(W, x, R, h, wx, ws, cm, flip, u0, n, c, m, g):
    """Gates and pointwise update of hidden units u0 .. u0+n-1 of one cell, one step.

    W, R      panels of the packed W (4H, I) and R (4H, P) rows (layout.py), in any
              of simd.py's precisions
    x    (I,) the frame, or empty when its W.x is in wx
    h    (P,) h of the previous step
    wx   (4H,)    packed W.x of this frame (a chunk's, computed beforehand), or unused
    c    (H,)     cell state: units u0.. updated in place
    m    (H,)     receives o * h(c) of units u0..
    g    (4*BLOCK,) scratch for this block's gate values (4n rounded up to the kernel's rows)
    flip walks the block's row sets last to first (layout.py).
    Every path sums (W.x + R.h) + bias in that order, so a chunk, a step and step_many
    give the same bits, and saturate alike (inf - inf never arises between two sums).
    """
    wide = (cm[C_WIDE] >> (0 if x.shape[0] > 0 else 1)) & 1 == 1
    if x.shape[0] == 0:
        g[:4 * n] = wx[4 * u0:4 * u0 + 4 * n]
    _gates(W, x, R, h, 4 * u0, 4 * n, wide, flip, g)
    b = cm[C_B] + 4 * u0
    _update_block(g[:4 * n], ws[b:b + 4 * n], ws, cm, u0, n, c, m)


@inline_kernel
def _unit_views(ws, cm, u0, n, c, m):
    """Units u0 .. u0+n-1 of a cell: their peepholes i, o, f, c and m."""
    H = cm[C_H]
    p = cm[C_PEEP] + u0
    return ws[p:p + n], ws[p + H:p + H + n], ws[p + 2 * H:p + 2 * H + n], c[u0:u0 + n], m[u0:u0 + n]


@inline_kernel
def _update_block(gb, pb, ws, cm, u0, n, c, m):
    """The pointwise update of hidden units u0 .. u0+n-1 of one cell.

    gb (4n,)  their gate products W.x + R.h in block order i, o, f, c (clobbered)
    pb (4n,)  their packed bias
    c, m      as in _cell_block
    Peepholes are always there (zeros when the model has none) and clip always applies
    (float32 max when it has none): both exact, and they keep the loops branch-free.
    Inlined, and the other activations' path takes the containers, not slices of
    them: a call beside the slices would keep numba from pruning their reference
    counts (~140 ns a block).
    """
    if cm[C_ACTF] != 0 or cm[C_ACTG] != 1 or cm[C_ACTH] != 1:
        _update_general(gb, pb, ws, cm, u0, n, c, m)
        return
    bound = ws[cm[C_PRM] + 6]
    pi, po, pf, cb, mb = _unit_views(ws, cm, u0, n, c, m)
    iforget = cm[C_IFORGET] == 1
    # sigmoid, tanh, tanh: whole vectors in IR (update_ir.py), the rest in one loop
    nvec = n // WIDTH
    update_std(gb, pb, pi, po, pf, cb, mb, nvec, bound, iforget)
    for j in range(nvec * WIDTH, n):
        c0 = cb[j]
        i = _sigmoid(min(max(gb[j] + pb[j] + pi[j] * c0, -bound), bound))
        f = _sigmoid(min(max(gb[2 * n + j] + pb[2 * n + j] + pf[j] * c0, -bound), bound))
        f = np.float32(1.0) - i if iforget else f
        c1 = f * c0 + i * _tanh(min(max(gb[3 * n + j] + pb[3 * n + j], -bound), bound))
        o = _sigmoid(min(max(gb[n + j] + pb[n + j] + po[j] * c1, -bound), bound))
        cb[j] = c1
        mb[j] = o * _tanh(c1)


@kernel
def _update_general(gb, pb, ws, cm, u0, n, c, m):
    """_update_block for any activations: one loop per gate and activation."""
    prm = ws[cm[C_PRM]:cm[C_PRM] + 7]
    pi, po, pf, cb, mb = _unit_views(ws, cm, u0, n, c, m)
    iforget = cm[C_IFORGET] == 1
    bound = prm[6]
    af, bf, ag, bg, ah, bh = prm[0], prm[1], prm[2], prm[3], prm[4], prm[5]
    gi = gb[0:n]
    go = gb[n:2 * n]
    gf = gb[2 * n:3 * n]
    gc = gb[3 * n:4 * n]
    for j in range(n):
        gi[j] = min(max(gi[j] + pb[j] + pi[j] * cb[j], -bound), bound)
        gf[j] = min(max(gf[j] + pb[2 * n + j] + pf[j] * cb[j], -bound), bound)
        gc[j] = min(max(gc[j] + pb[3 * n + j], -bound), bound)
    _act_inplace(cm[C_ACTF], af, bf, gi)
    if iforget:
        for j in range(n):
            gf[j] = np.float32(1.0) - gi[j]
    else:
        _act_inplace(cm[C_ACTF], af, bf, gf)
    _act_inplace(cm[C_ACTG], ag, bg, gc)
    for j in range(n):
        cb[j] = gf[j] * cb[j] + gi[j] * gc[j]
        go[j] = min(max(go[j] + pb[n + j] + po[j] * cb[j], -bound), bound)
        mb[j] = cb[j]
    _act_inplace(cm[C_ACTF], af, bf, go)
    _act_inplace(cm[C_ACTH], ah, bh, mb)
    for j in range(n):
        mb[j] *= go[j]


@parallel_kernel
def _cell_blocks_par(W, x, R, h, wx, ws, cm, flip, block, nthreads, c, m, g):
    """Every block of a cell, the blocks split in nthreads runs; g holds 4*block per thread."""
    H = cm[C_H]
    nblk = (H + block - 1) // block
    for t in prange(nthreads):
        gt = g[t * 4 * block:(t + 1) * 4 * block]
        b0 = t * nblk // nthreads
        b1 = (t + 1) * nblk // nthreads
        for k in range(b1 - b0):
            b = b1 - 1 - k if flip else b0 + k
            _cell_block(W, x, R, h, wx, ws, cm, flip, b * block, min(block, H - b * block), c, m, gt)


@kernel
def _cell(W, x, R, h, wx, ws, cm, hd, flip, c, hout, g, m):
    """One time step of one cell (arguments: _cell_block); hout (P,) receives the new h
    and may be h itself: every block reads h before any of it is written.
    Blocks run on hd[HD_THREADS] threads when that is > 1; flip walks them (and the
    row sets inside them) last to first, see layout.py."""
    # this function's arguments live through the call: views of them need no counting
    W, x, R, h, wx, ws = _unowned(W), _unowned(x), _unowned(R), _unowned(h), _unowned(wx), _unowned(ws)
    cm, hd, c, hout, g, m = _unowned(cm), _unowned(hd), _unowned(c), _unowned(hout), _unowned(g), _unowned(m)
    x, h = operand(W, x), operand(R, h)  # quantised once for every block (int8-dynamic)
    H = cm[C_H]
    block = hd[HD_BLOCK]
    nthreads = hd[HD_THREADS]
    if nthreads > 1 and H > block:
        _cell_blocks_par(W, x, R, h, wx, ws, cm, flip, block, nthreads, c, m, g)
    else:
        nblk = (H + block - 1) // block
        for k in range(nblk):
            u0 = block * (nblk - 1 - k if flip else k)
            _cell_block(W, x, R, h, wx, ws, cm, flip, u0, min(block, H - u0), c, m, g)
    _new_h(ws, cm, m, hout)


@kernel
def _new_h(ws, cm, m, hout):
    """hout (P,) = the cell's new h from m = o * h(c) (H,): projected, or as it is."""
    H = cm[C_H]
    P = cm[C_P]
    if cm[C_PROJ] >= 0:
        _matvec(ws[cm[C_PROJ]:cm[C_PROJ] + P * H].reshape(P, H), 0, P, m[:H], hout)
    else:
        for j in range(H):
            hout[j] = m[j]


@kernel
def _head(ws, hd, top, y):
    """y = act(W_head . top + b_head), or a copy of top when there is no head."""
    ws, hd, top, y = _unowned(ws), _unowned(hd), _unowned(top), _unowned(y)  # see _cell
    if hd[HD_HEAD_W] < 0:
        for j in range(top.shape[0]):
            y[j] = top[j]
        return
    O = hd[HD_OUT]
    K = hd[HD_TOP]
    hw = ws[hd[HD_HEAD_W]:hd[HD_HEAD_W] + O * K].reshape(O, K)
    _matvec(hw, 0, O, top, y)
    if hd[HD_HEAD_B] >= 0:
        for j in range(O):
            y[j] += ws[hd[HD_HEAD_B] + j]
    _head_act_inplace(hd[HD_HEAD_ACT], y)


@kernel
def _step(x, wp, meta, st):
    """One frame through every layer and the head of a forward-only model.

    x (I0,) input frame; wp the packed model typed as its weight panels (Packed.wp;
    ws is a view of it: one array argument less to dispatch, ~55 ns a call); st: a
    streaming buffer (state, then scratch; layout.py), whose y region receives the output.
    Returns OK, or NONFINITE / BADSHAPE with st untouched (the width is checked here so
    the engine's fast path needs no Python check).
    """
    x, wp, meta, st = _unowned(x), _unowned(wp), _unowned(meta), _unowned(st)  # see _cell
    hd = meta[0]
    if x.shape[0] != hd[HD_IN]:
        return BADSHAPE
    ws = wp.view(np.float32)
    for k in range(x.shape[0]):
        if not np.isfinite(x[k]):
            return NONFINITE
    ncell = hd[HD_NCELL]
    g = st[hd[HD_ST_G]:hd[HD_ST_M]]
    m = st[hd[HD_ST_M]:hd[HD_ST_Y]]
    xin = x
    flip = st[hd[HD_ST_FLIP]] != 0
    st[hd[HD_ST_FLIP]] = np.float32(0.0) if flip else np.float32(1.0)
    for cell in range(ncell):
        cm = meta[1 + cell]
        h = _h_of(st, hd, cell, cm[C_P])
        c = _c_of(st, hd, cell, cm[C_H])
        _cell(_w(wp, cm), xin, _r(wp, cm), h, ws[:0], ws, cm, hd, flip, c, h, g, m)
        xin = h  # this cell's new h is the next one's input
    top = _h_of(st, hd, ncell - 1, hd[HD_TOP])
    _head(ws, hd, top, st[hd[HD_ST_Y]:hd[HD_ST_Y] + hd[HD_OUT]])
    return OK


@kernel
def _update_stream(gates, ws, hd, cm, cell, addr, h, m):
    """A cell's pointwise update for one stream of step_many: gates (ROWS,) its W.x + R.h,
    addr its buffer (state updated there), h (P,) receives the new h; m scratch (H,)."""
    gates, ws, hd, cm, h, m = _unowned(gates), _unowned(ws), _unowned(hd), _unowned(cm), _unowned(h), _unowned(m)
    H = cm[C_H]
    st = _f32_at(addr, hd[HD_ST_LEN])
    c = _c_of(st, hd, cell, H)
    b = ws[cm[C_B]:cm[C_B] + 4 * H]
    for u0 in range(0, H, hd[HD_BLOCK]):
        n = min(hd[HD_BLOCK], H - u0)
        _update_block(gates[4 * u0:4 * u0 + 4 * n], b[4 * u0:4 * u0 + 4 * n], ws, cm, u0, n, c, m)
    _new_h(ws, cm, m, h)
    _h_of(st, hd, cell, cm[C_P])[:] = h


@kernel
def _step_many(x, wp, meta, addrs, y):
    """One frame for each of N streams of a forward-only model, every weight read once
    for all of them: W.x and R.h of the N streams are matrix products.

    x (N, I0) frames; wp as in _step; addrs (N,) addresses of the streams' buffers
    (Stream._st: layout.py), all distinct; y (N, OUT) receives the outputs. Returns OK,
    or NONFINITE with every stream untouched. Sums run in the same order as in _step, so
    each stream's output and state are bit for bit what its own step would give.
    """
    x, wp, meta, addrs, y = _unowned(x), _unowned(wp), _unowned(meta), _unowned(addrs), _unowned(y)
    N = x.shape[0]
    for i in range(N):
        for k in range(x.shape[1]):
            if not np.isfinite(x[i, k]):
                return NONFINITE
    ws = wp.view(np.float32)
    hd = meta[0]
    nthreads = hd[HD_THREADS]
    m = np.empty(hd[HD_HMAX], np.float32)
    nobias = ws[:0]
    xin = x
    for cell in range(hd[HD_NCELL]):
        cm = meta[1 + cell]
        P = cm[C_P]
        hs = np.empty((N, P), np.float32)  # h of every stream: R's operand, then the new h
        for i in range(N):
            hs[i] = _h_of(_f32_at(addrs[i], hd[HD_ST_LEN]), hd, cell, P)
        gates = np.empty((N, cm[C_ROWS]), np.float32)
        if nthreads > 1:
            _gemm_panel_par(operand_rows(wp, xin), _w(wp, cm), nobias, False, gates, nthreads)
            _gemm_panel_par(operand_rows(wp, hs), _r(wp, cm), nobias, True, gates, nthreads)
        else:
            _gemm_panel(operand_rows(wp, xin), _w(wp, cm), nobias, False, gates, 0, gates.shape[1])
            _gemm_panel(operand_rows(wp, hs), _r(wp, cm), nobias, True, gates, 0, gates.shape[1])
        # the updates stay on one thread: splitting them over 2 measured no gain
        # (threads=2 vs 1 at H=256: 1.62-1.84x either way; the products dominate)
        for i in range(N):
            _update_stream(gates[i], ws, hd, cm, cell, addrs[i], hs[i], m)
        xin = hs
    for i in range(N):
        _head(ws, hd, xin[i], y[i])
    return OK


@kernel
def _run(x, lengths, wp, meta, h, c, y):
    """Whole sequences, any direction: the offline run and the streaming chunk.

    x (B, T, I0) frames; lengths (B,) valid frames per sequence (<= T); wp as in _step
    h (B, ncell, PMAX), c (B, ncell, HMAX): initial state in, final state out
    y (B, T, OUT) output; frames past a sequence's length have zero layer output, and
    a sequence of length 0 ends in zero state (as in onnxruntime).
    Per layer and direction, W.x of all valid frames is one matrix product before the
    recurrence. Returns OK, or NONFINITE with h, c and y untouched.
    """
    x, lengths, wp, meta = _unowned(x), _unowned(lengths), _unowned(wp), _unowned(meta)  # see _cell
    h, c, y = _unowned(h), _unowned(c), _unowned(y)
    B = x.shape[0]
    T = x.shape[1]
    for b in range(B):
        for t in range(lengths[b]):
            for k in range(x.shape[2]):
                if not np.isfinite(x[b, t, k]):
                    return NONFINITE
    ws = wp.view(np.float32)
    hd = meta[0]
    ncell = hd[HD_NCELL]
    nthreads = hd[HD_THREADS]
    g = np.empty(nthreads * 4 * hd[HD_BLOCK], np.float32)
    m = np.empty(hd[HD_HMAX], np.float32)
    hp = np.empty(hd[HD_PMAX], np.float32)
    for b in range(B):
        n = lengths[b]
        cur = x[b]
        first = 0
        for layer in range(hd[HD_NLAYER]):
            width = 0
            last = first
            while last < ncell and meta[1 + last, C_LAYER] == layer:
                width += meta[1 + last, C_P]
                last += 1
            out = np.zeros((T, width), np.float32)
            for cell in range(first, last):
                cm = meta[1 + cell]
                H = cm[C_H]
                P = cm[C_P]
                col = cm[C_COL]
                W = _w(wp, cm)
                R = _r(wp, cm)
                wx = np.empty((n, cm[C_ROWS]), np.float32)
                if nthreads > 1:
                    _gemm_panel_par(operand_rows(W, cur[:n]), W, ws[:0], False, wx, nthreads)
                else:
                    _gemm_panel(operand_rows(W, cur[:n]), W, ws[:0], False, wx, 0, wx.shape[1])
                hs = hp[:P]
                for j in range(P):
                    hs[j] = h[b, cell, j]
                cs = c[b, cell, :H]
                if n == 0:  # onnxruntime's rule: an empty sequence ends in zero state
                    hs[:] = 0
                    cs[:] = 0
                for s in range(n):
                    t = n - 1 - s if cm[C_REV] == 1 else s
                    ht = out[t, col:col + P]
                    _cell(W, hs[:0], R, hs, wx[t], ws, cm, hd, s % 2 == 1, cs, ht, g, m)
                    for j in range(P):
                        hs[j] = ht[j]
                for j in range(P):
                    h[b, cell, j] = hs[j]
            cur = out
            first = last
        for t in range(T):
            _head(ws, hd, cur[t], y[b, t])
    return OK
