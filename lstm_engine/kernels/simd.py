"""Register-blocked micro-kernels over weight panels, written in LLVM IR.

numba's loop vectoriser turns dot products into good code, but not the panel form
below: with the accumulators in a local array it keeps them in memory (measured: 6-7
GB/s against 55-60 for dot products). So these few kernels are emitted by hand as
vector IR through numba's @intrinsic, and everything around them stays plain numba.

Panel layout (see packing.py): rows are cut into groups of 32; a group is stored
k-major, so row r = 32*g + j, column k sits at g*32*K + k*32 + j. One pass over k
reads each group as one sequential stream and keeps 32 rows in four 8-wide
accumulators: no horizontal sums, and several groups walked together give the
prefetchers several streams.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

GROUP = 32  # rows per panel group: four 8-float vectors

_F32 = ir.FloatType()
_V8 = ir.VectorType(_F32, 8)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


_V8I16 = ir.VectorType(ir.IntType(16), 8)
_V8I32 = ir.VectorType(_I32, 8)


def _load_weights(builder, ptr, bf16):
    """Eight weights as a float32 vector; bf16 bits become the upper half of a float32."""
    if not bf16:
        return builder.load(builder.bitcast(ptr, _V8.as_pointer()), align=4)
    bits = builder.load(builder.bitcast(ptr, _V8I16.as_pointer()), align=2)
    wide = builder.shl(builder.zext(bits, _V8I32), ir.Constant(_V8I32, [16] * 8))
    return builder.bitcast(wide, _V8)


def _panel_kernel(ngroups: int, nframes: int, accumulate: bool, bf16: bool = False):
    """An intrinsic kern(p, p_off, x, x_off, ldx, K, out, o_off, ldo) computing, for
    frames f < nframes and rows i < ngroups*32 from the group at element p_off:

        out[o_off + f*ldo + i] (+)= sum_k panel[i, k] * x[x_off + f*ldx + k]

    p, x, out: float32 arrays of any shape (only their data pointers are used); with
    accumulate the sums start from what out holds. k is unrolled by two; odd K ends
    in a tail step. With bf16 the panel holds bfloat16 bits (two per float32 slot of
    p; p_off counts bf16 elements): each load widens 8 of them to float32, the upper
    half of which they are, and the arithmetic stays float32.
    """
    nacc = ngroups * 4 * nframes

    @intrinsic
    def kern(typingctx, p, p_off, x, x_off, ldx, K, out, o_off, ldo):
        sig = types.void(p, p_off, x, x_off, ldx, K, out, o_off, ldo)

        def codegen(context, builder, signature, args):
            pa, poff, xa, xoff, ldx_, Kv, oa, ooff, ldo_ = args
            pdata = context.make_array(signature.args[0])(context, builder, pa).data
            if bf16:
                pdata = builder.bitcast(pdata, ir.IntType(16).as_pointer())
            xdata = context.make_array(signature.args[2])(context, builder, xa).data
            odata = context.make_array(signature.args[6])(context, builder, oa).data
            # fmuladd, not fma: fused where the CPU has FMA, mul + add (not a libm call) where not
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * 3), "llvm.fmuladd.v8f32")
            c = lambda v: ir.Constant(_I64, v)  # noqa: E731
            gstride = builder.mul(Kv, c(GROUP))
            gbase = [builder.gep(pdata, [builder.add(poff, builder.mul(gstride, c(g)))]) for g in range(ngroups)]
            xbase = [builder.gep(xdata, [builder.add(xoff, builder.mul(ldx_, c(f)))]) for f in range(nframes)]
            optr = []  # accumulator slot (f, g, j) -> its place in out
            for f in range(nframes):
                fbase = builder.gep(odata, [builder.add(ooff, builder.mul(ldo_, c(f)))])
                for g in range(ngroups):
                    for j in range(4):
                        optr.append(builder.bitcast(builder.gep(fbase, [c(GROUP * g + 8 * j)]), _V8.as_pointer()))
            if accumulate:
                init = [builder.load(q, align=4) for q in optr]
            else:
                init = [ir.Constant(_V8, [0.0] * 8)] * nacc
            kpairs = builder.and_(Kv, c(-2))

            def step(k, accs):
                """One k: broadcast each frame's x[k], one panel load feeds every frame."""
                out_ = list(accs)
                xs = []
                for f in range(nframes):
                    xk = builder.load(builder.gep(xbase[f], [k]))
                    xs.append(builder.shuffle_vector(
                        builder.insert_element(ir.Constant(_V8, ir.Undefined), xk, ir.Constant(_I32, 0)),
                        ir.Constant(_V8, ir.Undefined), ir.Constant(ir.VectorType(_I32, 8), [0] * 8)))
                off = builder.mul(k, c(GROUP))
                for g in range(ngroups):
                    row = builder.gep(gbase[g], [off])
                    for j in range(4):
                        w = _load_weights(builder, builder.gep(row, [c(8 * j)]), bf16)
                        for f in range(nframes):
                            i = (f * ngroups + g) * 4 + j
                            out_[i] = builder.call(fma, [w, xs[f], out_[i]])
                return out_

            entry = builder.basic_block
            loop = builder.append_basic_block("panel.loop")
            mid = builder.append_basic_block("panel.mid")
            tail = builder.append_basic_block("panel.tail")
            done = builder.append_basic_block("panel.done")
            builder.cbranch(builder.icmp_signed(">", kpairs, c(0)), loop, mid)

            builder.position_at_end(loop)
            k = builder.phi(_I64)
            accs = [builder.phi(_V8) for _ in range(nacc)]
            k.add_incoming(c(0), entry)
            for a, v in zip(accs, init):
                a.add_incoming(v, entry)
            new = step(builder.add(k, c(1)), step(k, accs))
            k2 = builder.add(k, c(2))
            end = builder.basic_block
            k.add_incoming(k2, end)
            for a, v in zip(accs, new):
                a.add_incoming(v, end)
            builder.cbranch(builder.icmp_signed("<", k2, kpairs), loop, mid)

            builder.position_at_end(mid)
            mids = [builder.phi(_V8) for _ in range(nacc)]
            for m, v0, v1 in zip(mids, init, new):
                m.add_incoming(v0, entry)
                m.add_incoming(v1, end)
            builder.cbranch(builder.icmp_signed("<", kpairs, Kv), tail, done)

            builder.position_at_end(tail)
            tails = step(kpairs, mids)
            builder.branch(done)

            builder.position_at_end(done)
            res = [builder.phi(_V8) for _ in range(nacc)]
            for r, v0, v1 in zip(res, mids, tails):
                r.add_incoming(v0, mid)
                r.add_incoming(v1, tail)
            for r, q in zip(res, optr):
                builder.store(r, q, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return kern


# 64 rows for one vector: two groups walked together (two streams, eight accumulators)
gemv64 = _panel_kernel(2, 1, accumulate=False)
gemv64_acc = _panel_kernel(2, 1, accumulate=True)
# 128 rows: four streams hide memory latency better once weights come from DRAM
# (H=1024: 941 -> 822 us), but sixteen accumulators cost more in cache (H=256: 31 -> 35)
gemv128 = _panel_kernel(4, 1, accumulate=False)
gemv128_acc = _panel_kernel(4, 1, accumulate=True)
# 32 rows for three frames: each panel load feeds three FMAs (twelve accumulators)
gemm32x3 = _panel_kernel(1, 3, accumulate=False)
gemm32x1 = _panel_kernel(1, 1, accumulate=False)  # the frames left over from threes
gemm32x3_acc = _panel_kernel(1, 3, accumulate=True)  # R.h of many streams onto their W.x
gemm32x1_acc = _panel_kernel(1, 1, accumulate=True)
# the same over bfloat16 panels: half the bytes streamed per weight
gemv64_bf16 = _panel_kernel(2, 1, accumulate=False, bf16=True)
gemv64_acc_bf16 = _panel_kernel(2, 1, accumulate=True, bf16=True)
gemv128_bf16 = _panel_kernel(4, 1, accumulate=False, bf16=True)
gemv128_acc_bf16 = _panel_kernel(4, 1, accumulate=True, bf16=True)
gemm32x3_bf16 = _panel_kernel(1, 3, accumulate=False, bf16=True)
gemm32x1_bf16 = _panel_kernel(1, 1, accumulate=False, bf16=True)
gemm32x3_acc_bf16 = _panel_kernel(1, 3, accumulate=True, bf16=True)
gemm32x1_acc_bf16 = _panel_kernel(1, 1, accumulate=True, bf16=True)
