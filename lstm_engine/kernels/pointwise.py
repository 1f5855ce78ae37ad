"""Element-wise math for the kernels: activations in place, head activations.

sigmoid and tanh use the rational approximation onnxruntime's MLAS also uses
(|error| < 1e-6), because libm calls do not vectorise and would dominate small steps.
"""
import numpy as np

from .config import kernel

_F = np.float32

HEAD_NONE, HEAD_SOFTMAX, HEAD_LOGSOFTMAX, HEAD_SIGMOID, HEAD_TANH, HEAD_RELU = range(6)


@kernel
def _tanh(x):
    """tanh of a float32 scalar: odd rational 13/6 on [-9, 9], where tanh is 1 to
    float32 precision beyond; loops over it vectorise (no libm call)."""
    x = min(max(x, _F(-9.0)), _F(9.0))
    x2 = x * x
    p = x2 * _F(-2.76076847742355e-16) + _F(2.00018790482477e-13)
    p = x2 * p + _F(-8.60467152213735e-11)
    p = x2 * p + _F(5.12229709037114e-08)
    p = x2 * p + _F(1.48572235717979e-05)
    p = x2 * p + _F(6.37261928875436e-04)
    p = x2 * p + _F(4.89352455891786e-03)
    q = x2 * _F(1.19825839466702e-06) + _F(1.18534705686654e-04)
    q = x2 * q + _F(2.26843463243900e-03)
    q = x2 * q + _F(4.89352518554385e-03)
    return x * p / q


@kernel
def _sigmoid(x):
    """1 / (1 + e^-x) of a float32 scalar, as 0.5 + 0.5 tanh(x / 2)."""
    return _F(0.5) * _tanh(_F(0.5) * x) + _F(0.5)


@kernel
def _act(code, alpha, beta, x):
    """One activation by its code (lstm_engine.activations order)."""
    if code == 0:
        return _sigmoid(x)
    if code == 1:
        return _tanh(x)
    if code == 2:
        return max(x, _F(0.0))
    if code == 3:
        return x if x >= 0 else alpha * x
    if code == 4:
        return x if x > alpha else _F(0.0)
    if code == 5:
        return alpha * _tanh(beta * x)
    if code == 6:
        return min(max(alpha * x + beta, _F(0.0)), _F(1.0))
    if code == 7:
        return x if x >= 0 else alpha * (np.exp(x) - _F(1.0))
    if code == 8:
        return x / (_F(1.0) + abs(x))
    if code == 9:
        return max(x, _F(0.0)) + np.log1p(np.exp(-abs(x)))
    return alpha * x + beta


@kernel
def _act_inplace(code, alpha, beta, a):
    """a[:] = act(a); sigmoid and tanh get loops of their own so they vectorise."""
    if code == 0:
        for j in range(a.shape[0]):
            a[j] = _sigmoid(a[j])
    elif code == 1:
        for j in range(a.shape[0]):
            a[j] = _tanh(a[j])
    else:
        for j in range(a.shape[0]):
            a[j] = _act(code, alpha, beta, a[j])


@kernel
def _head_act_inplace(code, y):
    """Activation after the dense head, over the whole output vector y (O,)."""
    if code == HEAD_SOFTMAX or code == HEAD_LOGSOFTMAX:
        mx = y[0]
        for j in range(1, y.shape[0]):
            mx = max(mx, y[j])
        s = _F(0.0)
        for j in range(y.shape[0]):
            s += np.exp(y[j] - mx)
        if code == HEAD_SOFTMAX:
            inv = _F(1.0) / s
            for j in range(y.shape[0]):
                y[j] = np.exp(y[j] - mx) * inv
        else:
            lse = mx + np.log(s)
            for j in range(y.shape[0]):
                y[j] = y[j] - lse
    elif code == HEAD_SIGMOID:
        _act_inplace(0, _F(0.0), _F(0.0), y)
    elif code == HEAD_TANH:
        _act_inplace(1, _F(0.0), _F(0.0), y)
    elif code == HEAD_RELU:
        for j in range(y.shape[0]):
            y[j] = max(y[j], _F(0.0))
