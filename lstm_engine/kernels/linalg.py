"""Products of weights and vectors for batch-1 recurrences.

Gate weights live in panels (simd.py) and go through its hand-written kernels;
the projection and head weights stay row-major and use _matvec, whose dot products
numba vectorises well on its own.
"""
import numpy as np
from numba import prange

from .config import inline_kernel, kernel, parallel_kernel
from .layout import BLOCK
from .quantize import columns, group_cols
from .simd import FRAMES, GROUP, gemm, gemm_acc, gemv2, gemv2_acc, gemv4, gemv4_acc

PAIR = 2 * GROUP  # gate rows per gemv2 call
QUAD = 4 * GROUP  # gate rows per gemv4 call, for weights that come from memory
assert 4 * BLOCK % QUAD == 0, "a block's gate rows must be whole row sets of the widest gemv"


@inline_kernel
def _offset(r, K, p):
    """Element offset of the group holding row r (a multiple of GROUP) in panel p of K
    columns (simd.py's layouts: quantize.group_cols)."""
    return r * group_cols(p, K)


@inline_kernel
def _gates(Wp, x, Rp, h, r0, n, wide, flip, out):
    """out[j] = W[r0 + j] . x + R[r0 + j] . h for j < n, rounded up to the kernel's row
    set (QUAD when wide, else PAIR; out must have room). Wp, Rp: panels of W (., I) and
    R (., P) padded to that row set, in any of simd.py's precisions; x may be empty
    when out already holds W.x: R.h then adds to it. flip walks the row sets last to
    first (layout.py)."""
    I = columns(Wp, x)
    P = columns(Rp, h)
    step = QUAD if wide else PAIR
    nset = (n + step - 1) // step
    for q in range(nset):
        r = r0 + step * (nset - 1 - q if flip else q)
        w_off = _offset(r, I, Wp)
        r_off = _offset(r, P, Rp)
        if wide:
            if I > 0:
                gemv4(Wp, w_off, x, 0, 0, I, out, r - r0, 0, 1)
            gemv4_acc(Rp, r_off, h, 0, 0, P, out, r - r0, 0, 1)
        else:
            if I > 0:
                gemv2(Wp, w_off, x, 0, 0, I, out, r - r0, 0, 1)
            gemv2_acc(Rp, r_off, h, 0, 0, P, out, r - r0, 0, 1)


@kernel
def _matvec(w, r0, n, vec, out):
    """out[j] = w[r0 + j] . vec for j < n.   w (R, K) row-major, vec (K,).

    Eight rows at a time: each vector load feeds eight FMA chains.
    """
    K = vec.shape[0]
    j = 0
    while j + 8 <= n:
        r = r0 + j
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        a0, a1, a2, a3, a4, a5, a6, a7 = w[r], w[r + 1], w[r + 2], w[r + 3], w[r + 4], w[r + 5], w[r + 6], w[r + 7]
        for k in range(K):
            x = vec[k]
            s0 += a0[k] * x
            s1 += a1[k] * x
            s2 += a2[k] * x
            s3 += a3[k] * x
            s4 += a4[k] * x
            s5 += a5[k] * x
            s6 += a6[k] * x
            s7 += a7[k] * x
        out[j] = s0
        out[j + 1] = s1
        out[j + 2] = s2
        out[j + 3] = s3
        out[j + 4] = s4
        out[j + 5] = s5
        out[j + 6] = s6
        out[j + 7] = s7
        j += 8
    while j < n:
        a = w[r0 + j]
        s = np.float32(0.0)
        for k in range(K):
            s += a[k] * vec[k]
        out[j] = s
        j += 1


@kernel
def _gemm_panel(a, Wp, bias, acc, out, r_begin, r_end):
    """out[t, r] (+)= bias[r] + a[t] . W[r] for r_begin <= r < r_end (multiples of GROUP);
    bias applies where r < len(bias) (pass it empty for none); acc adds to what out holds.
    a (T, K) frames (quantised rows for int8-dynamic panels: quantize.operand_rows), Wp
    the panel of W (., K) in any of simd.py's precisions,
    out (T, >= r_end). FRAMES frames share every panel load (fewer at the end)."""
    T = a.shape[0]
    K = columns(Wp, a)
    lda = a.shape[1]
    ld = out.shape[1]
    for r in range(r_begin, r_end, GROUP):
        po = _offset(r, K, Wp)
        for t in range(0, T, FRAMES):
            nf = min(FRAMES, T - t)
            if acc:
                gemm_acc(Wp, po, a, t * lda, lda, K, out, t * ld + r, ld, nf)
            else:
                gemm(Wp, po, a, t * lda, lda, K, out, t * ld + r, ld, nf)
    for t in range(T):
        for r in range(r_begin, min(r_end, bias.shape[0])):
            out[t, r] += bias[r]


@parallel_kernel
def _gemm_panel_par(a, Wp, bias, acc, out, nthreads):
    """_gemm_panel over all panel rows, split in nthreads runs of whole groups."""
    groups = out.shape[1] // GROUP
    for t in prange(nthreads):
        _gemm_panel(a, Wp, bias, acc, out, GROUP * (t * groups // nthreads),
                    GROUP * ((t + 1) * groups // nthreads))
