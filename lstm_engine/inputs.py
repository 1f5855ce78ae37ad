"""User inputs -> the arrays the kernels take, converted once at the boundary.

numba compiles a kernel anew for every new argument type, and the micro-kernels read
frames through their data pointers as contiguous rows. So the kernels see exactly one
array type: float32, C-contiguous, aligned and writable (numba types a read-only array
differently). Compilation stays enabled for everyone (toggling it races with other
threads); this module is what keeps every other type away from the kernels.
"""
from __future__ import annotations

import numpy as np

F32 = np.dtype(np.float32)  # the dtype of every float32 array numpy makes: `is` compares it fastest


def numeric(name, x) -> np.ndarray:
    """x (array-like) as a numpy array of real numbers, any dtype."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a


def kernel_array(a: np.ndarray) -> np.ndarray:
    """a (an array of real numbers, from numeric()) as the kernels' one array type: a
    itself when it is one, else a fresh copy."""
    if type(a) is np.ndarray and a.dtype is F32 and a.flags.carray:  # carray: C-contiguous, aligned, writable
        return a
    return a.astype(F32, order="C")  # ~0.1 µs less than np.array(a, F32, order="C")


def nonfinite(name) -> ValueError:
    return ValueError(f"{name}: contains NaN or infinity; refused so the state stays usable "
                      "(nothing was changed)")
