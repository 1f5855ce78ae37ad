"""Array views that numba does not reference-count.

_f32_at: a float32 array at a raw address, so one kernel call can reach the buffers of
many streams (Engine.step_many) without gathering them into one array first. The
caller guarantees the address points at a live float32 buffer of at least n elements
(Stream keeps its buffer for its whole life, and step_many holds the streams).
_unowned: an array without its reference, for the slices of the per-frame path.
"""
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import kernel


@intrinsic
def _f32_ptr(typingctx, addr):
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@kernel
def _f32_at(addr, n):
    """The n float32 values at address addr, as a 1-D array."""
    return carray(_f32_ptr(addr), n)


@intrinsic
def _unowned(typingctx, a):
    """a, as a view that carries no reference to its memory: numba then updates no
    reference count (an atomic add, ~20 cycles) for the slices made of it, which it
    does not always prune. Only for arrays that outlive the view: a function's own
    arguments, which its caller holds."""
    if not isinstance(a, types.Array):
        raise TypeError(f"_unowned takes an array, not {a}")

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
        ary.parent = cgutils.get_null_value(ary.parent.type)
        return ary._getvalue()

    return a(a), codegen
