"""The hand-written LLVM panel kernels (kernels/simd.py) against NumPy, edge cases included.

They run in the kernel variant of this process (lstm_engine.kernel_isa()); test_isa.py
runs this file under every variant the CPU can run."""
import numba
import numpy as np
import pytest

from lstm_engine import packing
from lstm_engine.kernels import simd
from lstm_engine.kernels.linalg import _offset
from lstm_engine.kernels.quantize import operand_rows
from lstm_engine.packing import bf16_bits, int8_panel, round_bf16, round_int8, to_panel


def panel(W, rows, prec):
    """W (R, K) as a panel of `rows` rows in precision prec (its dtype), and the weights it holds."""
    held = {simd.F32: W, simd.BF16: round_bf16(W), simd.I8: round_int8(W)}[prec]
    return packing.panel(W, rows, prec), held


G = simd.GROUP


def _gemv(kern, kern_acc):
    """A jitted caller of one GEMV kernel and its accumulating twin."""
    @numba.njit
    def call(p, x, out, acc):
        if acc:
            kern_acc(p, 0, x, 0, 0, x.shape[0], out, 0, 0, 1)
        else:
            kern(p, 0, x, 0, 0, x.shape[0], out, 0, 0, 1)
    return call


_gemv2 = _gemv(simd.gemv2, simd.gemv2_acc)
_gemv4 = _gemv(simd.gemv4, simd.gemv4_acc)


@numba.njit
def _gemm(p, p_off, X, t0, nf, out, acc):
    K = X.shape[1]
    if acc:
        simd.gemm_acc(p, p_off, X, t0 * K, K, K, out, t0 * out.shape[1], out.shape[1], nf)
    else:
        simd.gemm(p, p_off, X, t0 * K, K, K, out, t0 * out.shape[1], out.shape[1], nf)


PRECS = [simd.F32, simd.BF16, simd.I8]
PREC_IDS = ["f32", "bf16", "i8"]


@pytest.mark.parametrize("prec", PRECS, ids=PREC_IDS)
@pytest.mark.parametrize("K", [0, 1, 2, 3, 64, 65])
@pytest.mark.parametrize("rows, fn", [(2 * G, _gemv2), (4 * G, _gemv4)], ids=["2 groups", "4 groups"])
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
@pytest.mark.parametrize("frames", range(1, simd.FRAMES + 1))
def test_gemm_frames(rng, K, prec, frames):
    W = rng.standard_normal((2 * G, K)).astype(np.float32)
    X = rng.standard_normal((simd.FRAMES + 4, K)).astype(np.float32)
    p, Wq = panel(W, 2 * G, prec)
    out = np.zeros((len(X), G + 8), np.float32)
    end = 2 + frames
    _gemm(p, _offset(G, K, p), X, 2, frames, out, False)  # group 1, frames 2.. only
    want = X.astype(np.float64) @ Wq[G:].T
    assert np.allclose(out[2:end, :G], want[2:end], atol=1e-5)
    assert not out[:2].any() and not out[end:].any() and not out[:, G:].any()
    _gemm(p, _offset(G, K, p), X, 2, frames, out, True)
    assert np.allclose(out[2:end, :G], 2 * want[2:end], atol=1e-5)


def test_gemm_ignores_frame_counts_it_has_no_loop_for(rng):
    X = rng.standard_normal((simd.FRAMES + 1, 3)).astype(np.float32)
    p, _ = panel(rng.standard_normal((G, 3)).astype(np.float32), G, simd.F32)
    out = np.zeros((len(X), G), np.float32)
    for nf in (0, simd.FRAMES + 1):
        _gemm(p, 0, X, 0, nf, out, False)
    assert not out.any()


def test_panel_layout(rng):
    R = G + G // 4
    W = rng.standard_normal((R, 3)).astype(np.float32)
    p = to_panel(W, 2 * G).reshape(2, 3, G)  # groups, k, row in group
    assert np.array_equal(p[0].T, W[:G]) and np.array_equal(p[1].T[:R - G], W[G:]) and not p[1].T[R - G:].any()


@pytest.mark.parametrize("K", [3, 4])
def test_bf16_panel_layout(rng, K):
    """Column pairs (k, k+1) per row, odd K padded with a zero column."""
    R = G + G // 4
    W = rng.standard_normal((R, K)).astype(np.float32)
    Kp = K + K % 2
    p = packing.panel(W, 2 * G, simd.BF16).reshape(2, Kp // 2, G, 2)  # groups, pair, row, k in pair
    rows = p.transpose(0, 2, 1, 3).reshape(2 * G, Kp)
    assert np.array_equal(rows[:R, :K], bf16_bits(W)) and not rows[R:].any() and not rows[:, K:].any()


def test_int8_panel_layout(rng):
    R = G + G // 4
    W = rng.standard_normal((R, 3)).astype(np.float32)
    W[5] = 0  # a row of zeros
    g = int8_panel(W, 2 * G).view(np.int8).reshape(2, G * (3 + simd.I8_EXTRA))
    q = g[:, :3 * G].reshape(2, 3, G).transpose(0, 2, 1).reshape(2 * G, 3)  # rows, k
    scale = np.ascontiguousarray(g[:, 3 * G:]).view(np.float32).ravel()
    assert np.array_equal(q[:R] * scale[:R, None], round_int8(W)) and not q[R:].any() and not scale[R:].any()
    assert np.abs(q).max() == 127 and scale[5] == 0 and not q[5].any()


def test_int8_rounding_error_is_bounded(rng):
    W = rng.standard_normal((50, 200)).astype(np.float32)
    err = np.abs(round_int8(W) - W).max(axis=1)
    assert (err <= np.abs(W).max(axis=1) / 254 * (1 + 1e-6)).all()  # half a step of the row's scale


def test_kernels_refuse_other_dtypes():
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="float32, uint16"):
        _gemv2(np.zeros(2 * G * 4, np.float64), x, np.zeros(2 * G, np.float32), False)
    with pytest.raises(TypeError, match="float32 vectors"):
        _gemv2(np.zeros(2 * G * 4, np.float32), x.astype(np.float64), np.zeros(2 * G, np.float32), False)


def test_kernels_refuse_strided_arrays():
    """They use data pointers only: a strided view would be read as if contiguous."""
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="C-contiguous"):
        _gemv2(np.zeros(2 * G * 4, np.float32), x[::2], np.zeros(2 * G, np.float32), False)


@numba.njit
def _q8_gemm(p, X, nf, out, acc):
    xq = operand_rows(p, X)
    K4 = xq.shape[1] - 4
    if acc:
        simd.gemm_acc(p, 0, xq, 0, xq.shape[1], K4, out, 0, out.shape[1], nf)
    else:
        simd.gemm(p, 0, xq, 0, xq.shape[1], K4, out, 0, out.shape[1], nf)
    return xq


def _dequantised(xq, K):
    """What the kernels multiply: (q - 128) * s per row."""
    s = np.ascontiguousarray(xq[:, -4:]).view(np.float32)
    return (xq[:, :K].astype(np.float64) - simd.Q8_ZERO) * s


@pytest.mark.parametrize("K", [1, 3, 4, 5, 64, 67])
@pytest.mark.parametrize("frames", sorted({1, 2, simd.FRAMES}))
def test_int8_dynamic_gemm(rng, K, frames):
    """Integer dot products (vpdpbusd where the CPU has it) then the rescale: exactly
    the quantised weights times the quantised frames, up to float32 rounding."""
    W = rng.standard_normal((G + 5, K)).astype(np.float32)
    X = (rng.standard_normal((frames, K)) * np.linspace(0.01, 10, frames)[:, None]).astype(np.float32)
    X[0, 0] = 0 if K > 1 else X[0, 0]
    p = packing.panel(W, 2 * G, simd.Q8)
    out = np.full((frames, G + 8), 7.0, np.float32)
    xq = _q8_gemm(p, X, frames, out, False)
    want = _dequantised(xq, K) @ round_int8(W)[:G].T.astype(np.float64)
    assert np.allclose(out[:, :G], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert (out[:, G:] == 7.0).all()
    assert np.abs(_dequantised(xq, K) - X).max() <= np.abs(X).max(axis=1).max() / 254 * (1 + 1e-6)
    _q8_gemm(p, X, frames, out, True)
    assert np.allclose(out[:, :G], 2 * want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_int8_dynamic_quantises_a_row_of_zeros():
    p = packing.panel(np.ones((G, 4), np.float32), G, simd.Q8)
    out = np.ones((1, G), np.float32)
    xq = _q8_gemm(p, np.zeros((1, 4), np.float32), 1, out, False)
    assert (xq[0, :4] == simd.Q8_ZERO).all() and not out.any()


def test_int8_dynamic_panel_layout(rng):
    R, K = G + 3, 6
    W = rng.standard_normal((R, K)).astype(np.float32)
    g = packing.panel(W, 2 * G, simd.Q8).reshape(2, G * (8 + simd.Q8_EXTRA))
    q = g[:, :8 * G].view(np.int8).reshape(2, 2, G, 4).transpose(0, 2, 1, 3).reshape(2 * G, 8)  # rows, k
    scale = np.ascontiguousarray(g[:, 8 * G:12 * G]).view(np.float32).ravel()
    sums = np.ascontiguousarray(g[:, 12 * G:]).view(np.int32).ravel()
    assert np.array_equal(q[:R, :K] * scale[:R, None], round_int8(W)) and not q[:, K:].any() and not q[R:].any()
    assert np.array_equal(sums, q.astype(np.int32).sum(axis=1))
