"""The hand-written LLVM panel kernels (kernels/simd.py) against NumPy, edge cases included."""
import numba
import numpy as np
import pytest

from lstm_engine.kernels import simd
from lstm_engine.kernels.linalg import _offset
from lstm_engine.packing import bf16_bits, int8_panel, round_bf16, round_int8, to_panel


def panel(W, rows, prec):
    """W (R, K) as a panel of `rows` rows in precision prec (its dtype), and the weights it holds."""
    if prec == simd.I8:
        return int8_panel(W, rows).view(np.int8), round_int8(W)
    p = to_panel(W, rows)
    return (p, W) if prec == simd.F32 else (bf16_bits(p), round_bf16(W))


def _gemv(kern, kern_acc):
    """A jitted caller of one GEMV kernel and its accumulating twin."""
    @numba.njit
    def call(p, x, out, acc):
        if acc:
            kern_acc(p, 0, x, 0, 0, x.shape[0], out, 0, 0)
        else:
            kern(p, 0, x, 0, 0, x.shape[0], out, 0, 0)
    return call


_gemv64 = _gemv(simd.gemv64, simd.gemv64_acc)
_gemv128 = _gemv(simd.gemv128, simd.gemv128_acc)


def _gemm(kern, kern_acc):
    @numba.njit
    def call(p, p_off, X, t0, out, acc):
        K = X.shape[1]
        if acc:
            kern_acc(p, p_off, X, t0 * K, K, K, out, t0 * out.shape[1], out.shape[1])
        else:
            kern(p, p_off, X, t0 * K, K, K, out, t0 * out.shape[1], out.shape[1])
    return call


GEMMS = {1: _gemm(simd.gemm32x1, simd.gemm32x1_acc), 2: _gemm(simd.gemm32x2, simd.gemm32x2_acc),
         3: _gemm(simd.gemm32x3, simd.gemm32x3_acc)}


PRECS = [simd.F32, simd.BF16, simd.I8]
PREC_IDS = ["f32", "bf16", "i8"]


@pytest.mark.parametrize("prec", PRECS, ids=PREC_IDS)
@pytest.mark.parametrize("K", [0, 1, 2, 3, 64, 65])
@pytest.mark.parametrize("rows, fn", [(64, _gemv64), (128, _gemv128)], ids=["2 groups", "4 groups"])
def test_gemv(rng, K, rows, fn, prec):
    W = rng.standard_normal((rows, K)).astype(np.float32)
    x = rng.standard_normal(K).astype(np.float32)
    p, Wq = panel(W, rows, prec)
    want = Wq.astype(np.float64) @ x
    out = np.full(rows + 8, 7.0, np.float32)  # the kernel must not write past its rows
    fn(p, x, out, False)
    assert np.allclose(out[:rows], want, atol=1e-5)
    assert (out[rows:] == 7.0).all()
    fn(p, x, out, True)  # accumulate: adds to what out holds
    assert np.allclose(out[:rows], 2 * want, atol=1e-5)
    assert (out[rows:] == 7.0).all()


@pytest.mark.parametrize("prec", PRECS, ids=PREC_IDS)
@pytest.mark.parametrize("K", [1, 5, 32])
@pytest.mark.parametrize("frames", [1, 2, 3])
def test_gemm_frames(rng, K, prec, frames):
    W = rng.standard_normal((64, K)).astype(np.float32)
    X = rng.standard_normal((7, K)).astype(np.float32)
    p, Wq = panel(W, 64, prec)
    out = np.zeros((7, 40), np.float32)
    end = 2 + frames
    GEMMS[frames](p, _offset(32, K, p), X, 2, out, False)  # group 1, frames 2.. only
    want = X.astype(np.float64) @ Wq[32:].T
    assert np.allclose(out[2:end, :32], want[2:end], atol=1e-5)
    assert not out[:2].any() and not out[end:].any() and not out[:, 32:].any()
    GEMMS[frames](p, _offset(32, K, p), X, 2, out, True)
    assert np.allclose(out[2:end, :32], 2 * want[2:end], atol=1e-5)


def test_panel_layout(rng):
    W = rng.standard_normal((40, 3)).astype(np.float32)
    p = to_panel(W, 64).reshape(2, 3, 32)  # groups, k, row in group
    assert np.array_equal(p[0].T, W[:32]) and np.array_equal(p[1].T[:8], W[32:]) and not p[1].T[8:].any()


def test_int8_panel_layout(rng):
    W = rng.standard_normal((40, 3)).astype(np.float32)
    W[5] = 0  # a row of zeros
    g = int8_panel(W, 64).view(np.int8).reshape(2, 32 * (3 + simd.I8_EXTRA))
    q = g[:, :96].reshape(2, 3, 32).transpose(0, 2, 1).reshape(64, 3)  # rows, k
    scale = np.ascontiguousarray(g[:, 96:]).view(np.float32).ravel()
    assert np.array_equal(q[:40] * scale[:40, None], round_int8(W)) and not q[40:].any() and not scale[40:].any()
    assert np.abs(q).max() == 127 and scale[5] == 0 and not q[5].any()


def test_int8_rounding_error_is_bounded(rng):
    W = rng.standard_normal((50, 200)).astype(np.float32)
    err = np.abs(round_int8(W) - W).max(axis=1)
    assert (err <= np.abs(W).max(axis=1) / 254 * (1 + 1e-6)).all()  # half a step of the row's scale


def test_kernels_refuse_other_dtypes():
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="float32, uint16"):
        _gemv64(np.zeros(64 * 4, np.float64), x, np.zeros(64, np.float32), False)
    with pytest.raises(TypeError, match="float32 vectors"):
        _gemv64(np.zeros(64 * 4, np.float32), x.astype(np.float64), np.zeros(64, np.float32), False)
