"""A float32 array view at a raw address, so one kernel call can reach the buffers of
many streams (Engine.step_many) without gathering them into one array first.

The caller guarantees the address points at a live float32 buffer of at least n
elements (Stream keeps its buffer for its whole life, and step_many holds the streams).
"""
from numba import carray, types
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
