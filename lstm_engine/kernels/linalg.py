"""Matrix-vector and matrix-matrix products for batch-1 recurrences.

Rows are processed four at a time so each load of the vector feeds four FMA chains;
LLVM turns each chain into a vector accumulator (fastmath allows the reassociation).
"""
import numpy as np

from numba import prange

from .config import kernel, parallel_kernel


@kernel
def _matvec(w, r0, n, k0, vec, out):
    """out[j] = w[r0 + j, k0:k0 + K] . vec for j < n.   w (R, >= k0 + K) C-order, vec (K,).

    Eight rows at a time: each vector load feeds eight FMA chains, and eight row
    streams keep the prefetchers busy when w comes from L3 or memory. Columns are
    addressed by offset, not by a w[:, k0:] view, whose rows numba could not prove
    contiguous (and would not vectorise).
    """
    K = vec.shape[0]
    j = 0
    while j + 8 <= n:
        w0 = w[r0 + j, k0:k0 + K]
        w1 = w[r0 + j + 1, k0:k0 + K]
        w2 = w[r0 + j + 2, k0:k0 + K]
        w3 = w[r0 + j + 3, k0:k0 + K]
        w4 = w[r0 + j + 4, k0:k0 + K]
        w5 = w[r0 + j + 5, k0:k0 + K]
        w6 = w[r0 + j + 6, k0:k0 + K]
        w7 = w[r0 + j + 7, k0:k0 + K]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        for k in range(K):
            vk = vec[k]
            s0 += w0[k] * vk
            s1 += w1[k] * vk
            s2 += w2[k] * vk
            s3 += w3[k] * vk
            s4 += w4[k] * vk
            s5 += w5[k] * vk
            s6 += w6[k] * vk
            s7 += w7[k] * vk
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
        wj = w[r0 + j, k0:k0 + K]
        s = np.float32(0.0)
        for k in range(K):
            s += wj[k] * vec[k]
        out[j] = s
        j += 1


@kernel
def _gemm_nt(a, w, bias, out, r_begin, r_end):
    """out[t, r] = bias[r] + a[t] . w[r, :K] for rows r_begin <= r < r_end.
    a (T, K), w (R, >= K) C-order, bias (R,), out (T, R).

    A group of 4 weight rows stays in L1 while two frames at a time stream past it,
    so every weight load feeds two FMAs and every frame load four.
    """
    T = a.shape[0]
    K = a.shape[1]
    r = r_begin
    while r < r_end:
        nr = min(4, r_end - r)
        if nr == 4:
            w0 = w[r, :K]
            w1 = w[r + 1, :K]
            w2 = w[r + 2, :K]
            w3 = w[r + 3, :K]
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
                _matvec(w, r, 4, 0, a[t], out[t, r:r + 4])
                for j in range(4):
                    out[t, r + j] += bias[r + j]
        else:
            for t in range(T):
                _matvec(w, r, nr, 0, a[t], out[t, r:r + nr])
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
