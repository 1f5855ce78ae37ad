"""Matrix-vector and matrix-matrix products for batch-1 recurrences.

Rows are processed four at a time so each load of the vector feeds four FMA chains;
LLVM turns each chain into a vector accumulator (fastmath allows the reassociation).
"""
import numpy as np

from numba import prange

from .config import kernel, parallel_kernel


@kernel
def _matvec2(wa, va, wb, vb, r0, n, out):
    """out[j] = wa[r0 + j] . va + wb[r0 + j] . vb for j < n.
    wa (R, A), wb (R, B) C-order; va (A,), vb (B,); either vector may be empty.

    Eight rows at a time: each vector load feeds eight FMA chains, and eight row
    streams keep the prefetchers busy when the weights come from L3 or memory. Both
    products go into the same accumulators, so each row needs one horizontal sum.
    """
    A = va.shape[0]
    B = vb.shape[0]
    j = 0
    while j + 8 <= n:
        r = r0 + j
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        a0, a1, a2, a3, a4, a5, a6, a7 = wa[r], wa[r + 1], wa[r + 2], wa[r + 3], wa[r + 4], wa[r + 5], wa[r + 6], wa[r + 7]
        for k in range(A):
            x = va[k]
            s0 += a0[k] * x
            s1 += a1[k] * x
            s2 += a2[k] * x
            s3 += a3[k] * x
            s4 += a4[k] * x
            s5 += a5[k] * x
            s6 += a6[k] * x
            s7 += a7[k] * x
        b0, b1, b2, b3, b4, b5, b6, b7 = wb[r], wb[r + 1], wb[r + 2], wb[r + 3], wb[r + 4], wb[r + 5], wb[r + 6], wb[r + 7]
        for k in range(B):
            x = vb[k]
            s0 += b0[k] * x
            s1 += b1[k] * x
            s2 += b2[k] * x
            s3 += b3[k] * x
            s4 += b4[k] * x
            s5 += b5[k] * x
            s6 += b6[k] * x
            s7 += b7[k] * x
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
        a, b = wa[r0 + j], wb[r0 + j]
        s = np.float32(0.0)
        for k in range(A):
            s += a[k] * va[k]
        for k in range(B):
            s += b[k] * vb[k]
        out[j] = s
        j += 1


@kernel
def _matvec(w, r0, n, vec, out):
    """out[j] = w[r0 + j] . vec for j < n.   w (R, K) C-order, vec (K,)."""
    _matvec2(w, vec, w, vec[:0], r0, n, out)


@kernel
def _gemm_nt(a, w, bias, out, r_begin, r_end):
    """out[t, r] = bias[r] + a[t] . w[r] for rows r_begin <= r < r_end.
    a (T, K), w (R, K) C-order, bias (R,), out (T, R).

    A group of 4 weight rows stays in L1 while two frames at a time stream past it,
    so every weight load feeds two FMAs and every frame load four.
    """
    T = a.shape[0]
    K = a.shape[1]
    r = r_begin
    while r < r_end:
        nr = min(4, r_end - r)
        if nr == 4:
            w0 = w[r]
            w1 = w[r + 1]
            w2 = w[r + 2]
            w3 = w[r + 3]
            t = 0
            while t + 2 <= T:
                x0 = a[t]
                x1 = a[t + 1]
                s00 = np.float32(0.0)
                s01 = np.float32(0.0)
                s02 = np.float32(0.0)
                s03 = np.float32(0.0)
                s10 = np.float32(0.0)
                s11 = np.float32(0.0)
                s12 = np.float32(0.0)
                s13 = np.float32(0.0)
                for k in range(K):
                    p = x0[k]
                    q = x1[k]
                    s00 += w0[k] * p
                    s01 += w1[k] * p
                    s02 += w2[k] * p
                    s03 += w3[k] * p
                    s10 += w0[k] * q
                    s11 += w1[k] * q
                    s12 += w2[k] * q
                    s13 += w3[k] * q
                out[t, r] = s00 + bias[r]
                out[t, r + 1] = s01 + bias[r + 1]
                out[t, r + 2] = s02 + bias[r + 2]
                out[t, r + 3] = s03 + bias[r + 3]
                out[t + 1, r] = s10 + bias[r]
                out[t + 1, r + 1] = s11 + bias[r + 1]
                out[t + 1, r + 2] = s12 + bias[r + 2]
                out[t + 1, r + 3] = s13 + bias[r + 3]
                t += 2
            if t < T:
                _matvec(w, r, 4, a[t], out[t, r:r + 4])
                for j in range(4):
                    out[t, r + j] += bias[r + j]
        else:
            for t in range(T):
                _matvec(w, r, nr, a[t], out[t, r:r + nr])
                for j in range(nr):
                    out[t, r + j] += bias[r + j]
        r += nr


@parallel_kernel
def _gemm_nt_par(a, w, bias, out, nthreads):
    """_gemm_nt over all rows, split in nthreads runs of whole 4-row groups."""
    groups = (w.shape[0] + 3) // 4
    for t in prange(nthreads):
        _gemm_nt(a, w, bias, out, min(4 * (t * groups // nthreads), w.shape[0]),
                 min(4 * ((t + 1) * groups // nthreads), w.shape[0]))
