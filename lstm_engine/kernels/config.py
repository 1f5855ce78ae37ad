"""The one place that sets numba flags for every kernel.

fastmath is spelled out instead of `True` because `True` includes `nnan`/`ninf`,
which would let LLVM delete the kernels' own non-finite input checks.
"""
import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

FLAGS = dict(
    fastmath=FASTMATH,
    cache=True,
    nogil=True,
    boundscheck=False,
    error_model="numpy",
)


def kernel(fn):
    """Compile `fn` with the project's flags."""
    return numba.njit(**FLAGS)(fn)


def parallel_kernel(fn):
    """Compile `fn` with the project's flags and numba's prange threading."""
    return numba.njit(parallel=True, **FLAGS)(fn)
