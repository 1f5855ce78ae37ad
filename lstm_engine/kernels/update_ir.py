"""The pointwise update of sigmoid/tanh/tanh cells as vector IR, WIDTH units at a time.

numba vectorises the scalar loop in lstm._update_block, but LLVM's tuning for Intel
server CPUs keeps it to 256-bit vectors and it divides (vdivps) five times a unit. Here
the vectors are the variant's full width, and the one division of each rational
approximation becomes a reciprocal estimate refined by one Newton step (relative
error ~1e-7, below the approximation's own) where the CPU has one; the generic
variant divides. The arithmetic is otherwise that of pointwise._tanh and _sigmoid.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .isa import ISA
from .simd import WIDTH, counted_loop

_F32 = ir.FloatType()
_V = ir.VectorType(_F32, WIDTH)
_I64 = ir.IntType(64)
# tanh's odd rational 13/6 on [-9, 9] (pointwise._tanh), highest power first
_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
      1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
_RCP = {"avx512": "llvm.x86.avx512.rcp14.ps.512", "avx2": "llvm.x86.avx.rcp.ps.256"}


def _splat(v):
    return ir.Constant(_V, [float(v)] * WIDTH)


class _Math:
    """tanh, sigmoid and clamps on WIDTH-float vectors, emitted at a builder."""

    def __init__(self, builder):
        self.b = builder
        mod = builder.module
        self.fma = cgutils.get_or_insert_function(mod, ir.FunctionType(_V, [_V] * 3), f"llvm.fmuladd.v{WIDTH}f32")
        self.min = cgutils.get_or_insert_function(mod, ir.FunctionType(_V, [_V] * 2), f"llvm.minnum.v{WIDTH}f32")
        self.max = cgutils.get_or_insert_function(mod, ir.FunctionType(_V, [_V] * 2), f"llvm.maxnum.v{WIDTH}f32")
        name = _RCP.get(ISA.name)
        if name == _RCP["avx512"]:  # rcp14(a, passthru, mask)
            f = cgutils.get_or_insert_function(mod, ir.FunctionType(_V, [_V, _V, ir.IntType(16)]), name)
            self.rcp = lambda a: self.b.call(f, [a, _splat(0), ir.Constant(ir.IntType(16), -1)])
        elif name:
            f = cgutils.get_or_insert_function(mod, ir.FunctionType(_V, [_V]), name)
            self.rcp = lambda a: self.b.call(f, [a])
        else:
            self.rcp = None

    def clamp(self, x, lo, hi):
        return self.b.call(self.min, [self.b.call(self.max, [x, lo]), hi])

    def div(self, a, q):
        if self.rcp is None:
            return self.b.fdiv(a, q)
        y = self.rcp(q)
        e = self.b.call(self.fma, [self.b.fneg(q), y, _splat(1.0)])  # 1 - q*y
        y = self.b.call(self.fma, [y, e, y])
        return self.b.fmul(a, y)

    def tanh(self, x):
        b = self.b
        x = self.clamp(x, _splat(-9.0), _splat(9.0))
        x2 = b.fmul(x, x)
        p = _splat(_P[0])
        for k in _P[1:]:
            p = b.call(self.fma, [x2, p, _splat(k)])
        q = _splat(_Q[0])
        for k in _Q[1:]:
            q = b.call(self.fma, [x2, q, _splat(k)])
        return self.div(b.fmul(x, p), q)

    def sigmoid(self, x):
        return self.b.call(self.fma, [_splat(0.5), self.tanh(self.b.fmul(_splat(0.5), x)), _splat(0.5)])


@intrinsic
def update_std(typingctx, gb, pb, pi, po, pf, c, m, nvec, bound, iforget):
    """For units j < nvec*WIDTH of a block of n = len(c) units (gb, pb (4n,) in block
    order i, o, f, c; pi, po, pf, c, m (n,); all C-contiguous float32):

        i = sigmoid(clamp(gi + bi + pi*c)),  f = 1 - i if iforget else sigmoid(...pf...),
        c' = f*c + i*tanh(clamp(gc + bc)),  o = sigmoid(clamp(go + bo + po*c')),
        c <- c',  m <- o * tanh(c')

    clamp to [-bound, bound]. The units past nvec*WIDTH are the caller's.
    """
    arrays = (gb, pb, pi, po, pf, c, m)
    if any(a.dtype != types.float32 or a.layout != "C" for a in arrays):
        raise TypeError("update_std takes C-contiguous float32 arrays")
    sig = types.void(gb, pb, pi, po, pf, c, m, nvec, bound, iforget)

    def codegen(context, builder, signature, args):
        ptrs = [context.make_array(t)(context, builder, a).data for t, a in zip(signature.args[:7], args[:7])]
        gbp, pbp, pip, pop, pfp, cp, mp = ptrs
        nv, bnd, ifg = args[7], args[8], args[9]
        n = builder.extract_value(context.make_array(signature.args[5])(context, builder, args[5]).shape, 0)
        ivec = lambda x: builder.insert_element(ir.Constant(_V, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
        splat = lambda x: builder.shuffle_vector(ivec(x), ir.Constant(_V, ir.Undefined),
                                                 ir.Constant(ir.VectorType(ir.IntType(32), WIDTH), [0] * WIDTH))
        hi = splat(builder.fptrunc(bnd, _F32) if bnd.type != _F32 else bnd)
        lo = builder.fneg(hi)
        forget = builder.icmp_unsigned("!=", builder.zext(ifg, _I64) if ifg.type != _I64 else ifg,
                                       ir.Constant(_I64, 0))
        math = _Math(builder)
        n2 = builder.mul(n, ir.Constant(_I64, 2))
        n3 = builder.mul(n, ir.Constant(_I64, 3))

        def units(v, _):
            """Units v*WIDTH .. v*WIDTH + WIDTH-1."""
            j = builder.mul(v, ir.Constant(_I64, WIDTH))

            def at(p, off):
                return builder.bitcast(builder.gep(p, [builder.add(j, off)]), _V.as_pointer())

            def load(p, off=None):
                return builder.load(at(p, ir.Constant(_I64, 0) if off is None else off), align=4)

            def pre(off, peep, cell):  # gate + bias (+ peephole * cell), clamped
                z = builder.fadd(load(gbp, off), load(pbp, off))
                if peep is not None:
                    z = builder.call(math.fma, [load(peep), cell, z])
                return math.clamp(z, lo, hi)

            c0 = load(cp)
            i = math.sigmoid(pre(ir.Constant(_I64, 0), pip, c0))
            f = builder.select(forget, builder.fsub(_splat(1.0), i), math.sigmoid(pre(n2, pfp, c0)))
            c1 = builder.call(math.fma, [i, math.tanh(pre(n3, None, None)), builder.fmul(f, c0)])
            o = math.sigmoid(pre(n, pop, c1))
            builder.store(c1, at(cp, ir.Constant(_I64, 0)), align=4)
            builder.store(builder.fmul(o, math.tanh(c1)), at(mp, ir.Constant(_I64, 0)), align=4)
            return []

        counted_loop(builder, nv, [], units, "upd")
        return context.get_dummy_value()

    return sig, codegen
