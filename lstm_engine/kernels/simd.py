"""Register-blocked micro-kernels over weight panels, written in LLVM IR.

numba's loop vectoriser turns dot products into good code, but not the panel form
below: with the accumulators in a local array it keeps them in memory (measured: 6-7
GB/s against 55-60 for dot products). So these few kernels are emitted by hand as
vector IR through numba's @intrinsic, and everything around them stays plain numba.

One emitter serves every CPU: isa.py gives the vector width (WIDTH floats) and how
many frames a GEMM call blocks in registers; LLVM turns the generic vector IR into
zmm, ymm or NEON code.

Panel layout (see packing.py): rows are cut into groups of GROUP = 4 * WIDTH; a group
is stored k-major, so row r = GROUP*g + j, column k sits at g*GROUP*K + k*GROUP + j.
One pass over k reads each group as one sequential stream and keeps its rows in four
vector accumulators: no horizontal sums, and several groups walked together give the
prefetchers several streams.

Weights come in three precisions, told apart by the panel array's dtype, so each
is compiled on its own; arithmetic is float32 in all:
  float32
  uint16  bfloat16 bits, stored in column pairs (k, k+1) per row, so one load and
          a shift / a mask widen two columns to float32 (odd K padded with a zero
          column): a group holds GROUP*(K + K%2) bf16, pair p of row j at
          p*2*GROUP + 2*j
  int8    converted exactly to float32; each row has its own scale. A group holds
          its GROUP*K int8 weights, then its GROUP float32 scales, as if every row had
          I8_EXTRA more columns: group g starts at int8 element g*GROUP*(K + I8_EXTRA).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .isa import ISA

WIDTH = ISA.width  # floats per vector: 16 on AVX-512, 8 on AVX2, 4 generic
GROUP = 4 * WIDTH  # rows per panel group: four vectors
FRAMES = ISA.frames  # frames one GEMM call feeds from each weight load (4 * FRAMES accumulators)
F32, BF16, I8, Q8 = "float32", "uint16", "int8", "uint8"  # panel dtypes of the four precisions
I8_EXTRA = 4  # int8 "columns" per row taken by its float32 scale
Q8_EXTRA = 8  # int8-dynamic "columns" per row: its float32 scale and int32 row sum
Q8_ZERO = 128  # quantised x and h are u8 with this zero point (q = round(x / s) + 128)

_F32 = ir.FloatType()
_V = ir.VectorType(_F32, WIDTH)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VI8 = ir.VectorType(ir.IntType(8), WIDTH)
_VI32 = ir.VectorType(_I32, WIDTH)
_ELEMENT = {F32: _F32, BF16: ir.IntType(16), I8: ir.IntType(8), Q8: ir.IntType(8)}


def _load_weights(builder, ptr, prec, pair):
    """The weights of one vector of rows at ptr (an element pointer of the panel's
    dtype) as float32 vectors: [column k], or [k, k+1] from one bf16 pair load."""
    if prec == F32:
        return [builder.load(builder.bitcast(ptr, _V.as_pointer()), align=4)]
    if prec == BF16:  # 32-bit lanes hold (k, k+1); a bf16 is the upper half of its float32
        lanes = builder.load(builder.bitcast(ptr, _VI32.as_pointer()), align=4)
        ws = [builder.bitcast(builder.shl(lanes, ir.Constant(_VI32, [16] * WIDTH)), _V)]
        if pair:
            ws.append(builder.bitcast(builder.and_(lanes, ir.Constant(_VI32, [-65536] * WIDTH)), _V))
        return ws
    q = builder.load(builder.bitcast(ptr, _VI8.as_pointer()), align=1)
    return [builder.sitofp(builder.sext(q, _VI32), _V)]


def _check_types(p, x, out):
    """Typing-time guard: the kernels use only data pointers, so anything but a
    C-contiguous array of the right dtype would be read wrongly."""
    xdt = types.uint8 if str(p.dtype) == Q8 else types.float32  # Q8 panels take quantised rows
    if str(p.dtype) not in _ELEMENT or x.dtype != xdt or out.dtype != types.float32:
        raise TypeError(f"panel kernels take a float32, uint16 (bf16) or int8 panel and float32 "
                        f"vectors (a uint8 panel: quantised uint8 rows), not {p.dtype}, {x.dtype}, "
                        f"{out.dtype}")
    if any(a.layout != "C" for a in (p, x, out)):
        raise TypeError("panel kernels take C-contiguous arrays only")


def _panel_kernel(ngroups: int, maxframes: int, accumulate: bool):
    """An intrinsic kern(p, p_off, x, x_off, ldx, K, out, o_off, ldo, nf) computing, for
    frames f < nf (1 <= nf <= maxframes) and rows i < ngroups*GROUP from the group at
    element p_off:

        out[o_off + f*ldo + i] (+)= sum_k panel[i, k] * x[x_off + f*ldx + k]

    p: a C-contiguous panel array of one of the three dtypes above, p_off counting its
    elements; x, out: C-contiguous float32 arrays of any shape (only their data pointers
    are used); with accumulate the sums add to what out holds. Each frame count has its
    own register-blocked loop, chosen by a switch on nf. k is unrolled by two; odd K
    ends in a tail step.
    """
    @intrinsic
    def kern(typingctx, p, p_off, x, x_off, ldx, K, out, o_off, ldo, nf):
        sig = types.void(p, p_off, x, x_off, ldx, K, out, o_off, ldo, nf)
        _check_types(p, x, out)
        prec = str(p.dtype)

        def codegen(context, builder, signature, args):
            pa, poff, xa, xoff, ldx_, Kv, oa, ooff, ldo_, nfv = args
            pdata = context.make_array(signature.args[0])(context, builder, pa).data
            xdata = context.make_array(signature.args[2])(context, builder, xa).data
            odata = context.make_array(signature.args[6])(context, builder, oa).data
            # fmuladd, not fma: fused where the CPU has FMA, mul + add (not a libm call) where not
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V] * 3),
                                                 f"llvm.fmuladd.v{WIDTH}f32")
            c = lambda v: ir.Constant(_I64, v)
            done = builder.append_basic_block("panel.done")
            switch = builder.switch(builder.sext(nfv, _I64) if nfv.type != _I64 else nfv, done)
            for nframes in range(1, maxframes + 1):
                case = builder.append_basic_block(f"panel.f{nframes}")
                switch.add_case(c(nframes), case)
                builder.position_at_end(case)
                xbase = [builder.gep(xdata, [builder.add(xoff, builder.mul(ldx_, c(f)))]) for f in range(nframes)]
                optr = []  # accumulator slot (f, g, j) -> its place in out
                for f in range(nframes):
                    fbase = builder.gep(odata, [builder.add(ooff, builder.mul(ldo_, c(f)))])
                    for g in range(ngroups):
                        for j in range(4):
                            optr.append(builder.bitcast(builder.gep(fbase, [c(GROUP * g + WIDTH * j)]),
                                                        _V.as_pointer()))
                emit = _emit_q8 if prec == Q8 else _emit
                emit(builder, fma, pdata, poff, xbase, Kv, optr, prec, accumulate, ngroups, nframes)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return kern


def _emit(builder, fma, wdata, poff, xbase, Kv, optr, prec, acc, ngroups, nframes):
    """The k loop and the stores of one kernel, emitted at the builder's block."""
    c = lambda v: ir.Constant(_I64, v)
    nacc = ngroups * 4 * nframes
    if prec == I8:
        cols = builder.add(Kv, c(I8_EXTRA))
    elif prec == BF16:
        cols = builder.add(Kv, builder.and_(Kv, c(1)))  # pairs: odd K padded to even
    else:
        cols = Kv
    gstride = builder.mul(cols, c(GROUP))
    gbase = [builder.gep(wdata, [builder.add(poff, builder.mul(gstride, c(g)))]) for g in range(ngroups)]
    if acc and prec != I8:
        init = [builder.load(q, align=4) for q in optr]
    else:  # int8 sums are scaled before they meet out
        init = [ir.Constant(_V, [0.0] * WIDTH)] * nacc
    kpairs = builder.and_(Kv, c(-2))

    def step(k, accs, pair):
        """Column k (and k+1 when pair): broadcast each frame's x, one panel load feeds
        every frame."""
        out_ = list(accs)
        ks = [k, builder.add(k, c(1))] if pair else [k]
        xs = []  # xs[f][e]: frame f's x[k + e] in every lane
        for f in range(nframes):
            xs.append([builder.shuffle_vector(
                builder.insert_element(ir.Constant(_V, ir.Undefined), builder.load(builder.gep(xbase[f], [kk])),
                                       ir.Constant(_I32, 0)),
                ir.Constant(_V, ir.Undefined), ir.Constant(_VI32, [0] * WIDTH)) for kk in ks])
        off = builder.mul(k, c(GROUP))
        vec = 2 * WIDTH if prec == BF16 else WIDTH  # panel elements per vector of rows
        for g in range(ngroups):
            row = builder.gep(gbase[g], [off])
            for j in range(4):
                ws = _load_weights(builder, builder.gep(row, [c(vec * j)]), prec, pair)
                for e, w in enumerate(ws):
                    for f in range(nframes):
                        i = (f * ngroups + g) * 4 + j
                        out_[i] = builder.call(fma, [w, xs[f][e], out_[i]])
        return out_

    def pair(p, accs):
        """Columns 2p and 2p+1: a bf16 pair from one load, else one column after the other."""
        k = builder.mul(p, c(2))
        return step(k, accs, True) if prec == BF16 else step(builder.add(k, c(1)), step(k, accs, False), False)

    res = counted_loop(builder, builder.lshr(Kv, c(1)), init, pair, f"panel.{nframes}")
    # an odd K's last column: a loop of zero or one trip
    res = counted_loop(builder, builder.and_(Kv, c(1)), res, lambda _, accs: step(kpairs, accs, False),
                       f"panel.tail{nframes}")
    if prec == I8:  # row scales sit after the group's weights
        scales = []
        for g in range(ngroups):
            sp = builder.bitcast(builder.gep(gbase[g], [builder.mul(Kv, c(GROUP))]), _F32.as_pointer())
            scales.append([builder.load(builder.bitcast(builder.gep(sp, [c(WIDTH * j)]), _V.as_pointer()), align=1)
                           for j in range(4)])
        for f in range(nframes):
            for g in range(ngroups):
                for j in range(4):
                    i = (f * ngroups + g) * 4 + j
                    res[i] = builder.call(fma, [res[i], scales[g][j], builder.load(optr[i], align=4)]) if acc \
                        else builder.fmul(res[i], scales[g][j])
    for r, q in zip(res, optr):
        builder.store(r, q, align=4)


def counted_loop(builder, n, inits, body, name):
    """Emit `for i in range(n): values = body(i, values)` at the builder, the values
    carried in registers (phis); returns them after the loop (inits when n <= 0)."""
    entry = builder.basic_block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(n.type, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(n.type)
    vals = [builder.phi(v.type) for v in inits]
    i.add_incoming(ir.Constant(n.type, 0), entry)
    for v, v0 in zip(vals, inits):
        v.add_incoming(v0, entry)
    new = body(i, vals)
    i2 = builder.add(i, ir.Constant(n.type, 1))
    back = builder.basic_block
    i.add_incoming(i2, back)
    for v, v1 in zip(vals, new):
        v.add_incoming(v1, back)
    builder.cbranch(builder.icmp_signed("<", i2, n), loop, done)
    builder.position_at_end(done)
    outs = [builder.phi(v.type) for v in inits]
    for o, v0, v1 in zip(outs, inits, new):
        o.add_incoming(v0, entry)
        o.add_incoming(v1, back)
    return outs


def _dot4(builder, acc, xq, w):
    """acc + the sums of four u8 (xq) x s8 (w) products in every 32-bit lane."""
    if ISA.vnni:
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VI32, [_VI32] * 3),
                                           f"llvm.x86.avx512.vpdpbusd.{32 * WIDTH}")
        return builder.call(f, [acc, xq, w])
    for e in range(4):  # portable: each byte of a lane in turn
        xe = builder.and_(builder.lshr(xq, ir.Constant(_VI32, [8 * e] * WIDTH)), ir.Constant(_VI32, [255] * WIDTH))
        we = builder.ashr(builder.shl(w, ir.Constant(_VI32, [24 - 8 * e] * WIDTH)), ir.Constant(_VI32, [24] * WIDTH))
        acc = builder.add(acc, builder.mul(xe, we))
    return acc


def _emit_q8(builder, fma, wdata, poff, xbase, Kv, optr, prec, acc, ngroups, nframes):
    """_emit for int8-dynamic panels: integer dot products of the quantised x rows with
    the int8 weights, then the rescale in float32.

    A panel group holds its rows' int8 weights as quads of columns (k = 4q .. 4q+3 of
    row j in the 4 bytes at q*4*GROUP + 4*j; K padded to K4, a multiple of 4), then
    GROUP float32 scales, then GROUP int32 row sums. A quantised x row holds K4 u8
    (x/s + Q8_ZERO), then s as float32. W.x = scale * s * (sum q_w q_x - Q8_ZERO * rowsum).
    """
    c = lambda v: ir.Constant(_I64, v)
    nacc = ngroups * 4 * nframes
    k4 = builder.and_(builder.add(Kv, c(3)), c(-4))
    gstride = builder.mul(builder.add(k4, c(Q8_EXTRA)), c(GROUP))
    gbase = [builder.gep(wdata, [builder.add(poff, builder.mul(gstride, c(g)))]) for g in range(ngroups)]
    nq = builder.lshr(k4, c(2))
    zero = ir.Constant(_VI32, [0] * WIDTH)

    def quad(q, accs):
        """Columns 4q .. 4q+3: one broadcast per frame, one weight load feeds every frame."""
        xs = []
        for f in range(nframes):
            xq = builder.load(builder.bitcast(builder.gep(xbase[f], [builder.mul(q, c(4))]), _I32.as_pointer()),
                              align=1)
            xs.append(builder.shuffle_vector(builder.insert_element(ir.Constant(_VI32, ir.Undefined), xq,
                                                                     ir.Constant(_I32, 0)),
                                             ir.Constant(_VI32, ir.Undefined), ir.Constant(_VI32, [0] * WIDTH)))
        off = builder.mul(q, c(4 * GROUP))
        new = list(accs)
        for g in range(ngroups):
            row = builder.gep(gbase[g], [off])
            for j in range(4):
                w = builder.load(builder.bitcast(builder.gep(row, [c(4 * WIDTH * j)]), _VI32.as_pointer()), align=1)
                for f in range(nframes):
                    i = (f * ngroups + g) * 4 + j
                    new[i] = _dot4(builder, new[i], xs[f], w)
        return new

    res = counted_loop(builder, nq, [zero] * nacc, quad, f"q8.{nframes}")
    vload = lambda ptr, t: builder.load(builder.bitcast(ptr, t.as_pointer()), align=1)
    tail = [builder.gep(gbase[g], [builder.mul(k4, c(GROUP))]) for g in range(ngroups)]
    scales = [[vload(builder.gep(tail[g], [c(4 * WIDTH * j)]), _V) for j in range(4)] for g in range(ngroups)]
    sums = [[vload(builder.gep(tail[g], [c(4 * GROUP + 4 * WIDTH * j)]), _VI32) for j in range(4)]
            for g in range(ngroups)]
    zp = ir.Constant(_VI32, [Q8_ZERO] * WIDTH)
    # numba's fastmath marks every unflagged float operation reassociable, and LLVM
    # could then order dot * (row scale * frame scale) differently per kernel: the
    # rescale carries a flag of its own ("nsz", harmless here), so every path gives
    # the same bits
    exact = ("nsz",)
    for f in range(nframes):
        xscale = builder.load(builder.bitcast(builder.gep(xbase[f], [k4]), _F32.as_pointer()), align=1)
        xsv = builder.shuffle_vector(builder.insert_element(ir.Constant(_V, ir.Undefined), xscale, ir.Constant(_I32, 0)),
                                     ir.Constant(_V, ir.Undefined), ir.Constant(_VI32, [0] * WIDTH))
        for g in range(ngroups):
            for j in range(4):
                i = (f * ngroups + g) * 4 + j
                dot = builder.sitofp(builder.sub(res[i], builder.mul(zp, sums[g][j])), _V)
                scale = builder.fmul(scales[g][j], xsv, flags=exact)
                v = builder.call(fma, [dot, scale, builder.load(optr[i], align=4)]) if acc \
                    else builder.fmul(dot, scale, flags=exact)
                builder.store(v, optr[i], align=4)


# GEMV, one frame: two groups walked together (two streams, eight accumulators)
gemv2 = _panel_kernel(2, 1, accumulate=False)
gemv2_acc = _panel_kernel(2, 1, accumulate=True)
# four streams hide memory latency better once weights come from DRAM (H=1024 on Zen 3:
# 941 -> 822 us), but sixteen accumulators cost more in cache (H=256: 31 -> 35)
gemv4 = _panel_kernel(4, 1, accumulate=False)
gemv4_acc = _panel_kernel(4, 1, accumulate=True)
# GEMM: one group for up to FRAMES frames, each panel load feeding FRAMES FMAs
gemm = _panel_kernel(1, FRAMES, accumulate=False)
gemm_acc = _panel_kernel(1, FRAMES, accumulate=True)  # R.h of many streams onto their W.x
