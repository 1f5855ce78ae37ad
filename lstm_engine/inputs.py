"""User inputs -> the arrays the kernels take, converted once at the boundary.

numba compiles a kernel anew for every new argument type, and the micro-kernels read
frames through their data pointers as contiguous rows. So the kernels see exactly one
array type: float32, C-contiguous, aligned and writable (numba types a read-only array
differently). Compilation stays enabled for everyone (toggling it races with other
threads); this module is what keeps every other type away from the kernels.
"""
from __future__ import annotations

import sys

import numpy as np

F32 = np.dtype(np.float32)  # the dtype of every float32 array numpy makes: `is` compares it fastest


def array(name, x) -> np.ndarray:
    """x (array-like, or a CPU torch tensor) as a numpy array, any dtype."""
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = _tensor_values(name, x, torch)
    return np.asarray(x)


def numeric(name, x) -> np.ndarray:
    """x (array-like, or a CPU torch tensor) as a numpy array of real numbers, any dtype."""
    a = array(name, x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a


def _tensor_values(name, t, torch) -> np.ndarray:
    """A CPU tensor's values as numpy, without gradient tracking (the engine keeps none)."""
    if t.device.type != "cpu":
        raise ValueError(f"{name}: a torch tensor on device {t.device.type!r}; the engine reads "
                         "host memory: pass a CPU tensor (tensor.cpu())")
    t = t.detach()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as e:  # sparse, quantized, conjugate views: torch says what to do
        raise ValueError(f"{name}: this torch tensor has no numpy view ({e})") from None


def kernel_array(a: np.ndarray) -> np.ndarray:
    """a (an array of real numbers, from numeric()) as the kernels' one array type: a
    itself when it is one, else a fresh copy."""
    if type(a) is np.ndarray and a.dtype is F32 and a.flags.carray:  # carray: C-contiguous, aligned, writable
        return a
    return a.astype(F32, order="C")  # ~0.1 µs less than np.array(a, F32, order="C")


def nonfinite(name) -> ValueError:
    return ValueError(f"{name}: contains NaN or infinity; refused so the state stays usable "
                      "(nothing was changed)")
