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


def inline_kernel(fn):
    """A kernel numba inlines into its callers before lowering: a call with array
    arguments, and every slice made inside it, would otherwise cost atomic reference
    count updates that numba prunes only within one function."""
    return numba.njit(inline="always", **FLAGS)(fn)


def parallel_kernel(fn):
    """Compile `fn` with the project's flags and numba's prange threading."""
    return numba.njit(parallel=True, **FLAGS)(fn)
