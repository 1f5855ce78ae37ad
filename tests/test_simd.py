"""The hand-written LLVM panel kernels (kernels/simd.py) against NumPy, edge cases included."""
import numba
import numpy as np
import pytest

from lstm_engine.kernels import simd
from lstm_engine.packing import to_panel


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


@numba.njit
def _gemm32x3(p, X, t0, out):
    K = X.shape[1]
    simd.gemm32x3(p, 0, X, t0 * K, K, K, out, t0 * out.shape[1], out.shape[1])


@pytest.mark.parametrize("K", [0, 1, 2, 3, 64, 65])
@pytest.mark.parametrize("rows, fn", [(64, _gemv64), (128, _gemv128)], ids=["2 groups", "4 groups"])
def test_gemv(rng, K, rows, fn):
    W = rng.standard_normal((rows, K)).astype(np.float32)
    x = rng.standard_normal(K).astype(np.float32)
    p = to_panel(W, rows)
    out = np.full(rows + 8, 7.0, np.float32)  # the kernel must not write past its rows
    fn(p, x, out, False)
    assert np.allclose(out[:rows], W.astype(np.float64) @ x, atol=1e-5)
    assert (out[rows:] == 7.0).all()
    fn(p, x, out, True)  # accumulate: starts from what out holds
    assert np.allclose(out[:rows], 2 * (W.astype(np.float64) @ x), atol=1e-5)


@pytest.mark.parametrize("K", [1, 5, 32])
def test_gemm_three_frames(rng, K):
    W = rng.standard_normal((32, K)).astype(np.float32)
    X = rng.standard_normal((7, K)).astype(np.float32)
    out = np.zeros((7, 40), np.float32)
    _gemm32x3(to_panel(W, 32), X, 2, out)  # frames 2, 3, 4 only
    want = X.astype(np.float64) @ W.T
    assert np.allclose(out[2:5, :32], want[2:5], atol=1e-5)
    assert not out[:2].any() and not out[5:].any() and not out[:, 32:].any()


def test_panel_layout(rng):
    W = rng.standard_normal((40, 3)).astype(np.float32)
    p = to_panel(W, 64).reshape(2, 3, 32)  # groups, k, row in group
    assert np.array_equal(p[0].T, W[:32]) and np.array_equal(p[1].T[:8], W[32:]) and not p[1].T[8:].any()


@numba.njit
def _gemv64_bf16(p, x, out):
    simd.gemv64_bf16(p, 0, x, 0, 0, x.shape[0], out, 0, 0)


@pytest.mark.parametrize("K", [1, 3, 64])
def test_gemv_bf16(rng, K):
    from lstm_engine.packing import bf16_bits, round_bf16

    W = rng.standard_normal((64, K)).astype(np.float32)
    x = rng.standard_normal(K).astype(np.float32)
    bits = bf16_bits(to_panel(W, 64))
    p = np.append(bits, np.uint16(0)).view(np.float32) if bits.size % 2 else bits.view(np.float32)
    out = np.zeros(64, np.float32)
    _gemv64_bf16(p, x, out)
    assert np.allclose(out, round_bf16(W).astype(np.float64) @ x, atol=1e-5)
