"""``tile_fma`` and ``tile_gather_fma``: six rows of sixteen multiply-add sums kept in vector
registers, for the convolution kernels' inner loops (``tile_gather_fma`` reads both operands
through offsets: conv.py's implicit GEMM); ``tile_transpose``, at the end of this file: an
8 x 8 block of a layout copy moved through registers. The one piece of the CPU backend
written in LLVM IR.

What it computes, for k < 6 and q < 16 (``ROWS`` = 6, ``WIDTH`` = 16)::

    out[k*pitch + q0 + q] = init[r0 + k] + sum over t < T of w[t, r0 + k] * src[offs[t] + q0 + q]

with the sum taken in the order t = 0, 1, ..., each step one fused multiply-add (one
rounding), exactly as the loop ``a = fma(w[t, r0+k], src[offs[t]+q0+q], a)`` would; the
arrays are read flat (C order), whatever their number of dimensions. A forward convolution
is this with src = the padded input planes, offs = the flat offsets of the kernel taps, w =
the weight as (taps, output channels) and init = the bias: one call makes 16 wide output
positions of 6 output channels. conv.py also runs its backward-data passes through it.

Why IR: written as Numba loops, the sum over taps either keeps its sixteen-by-six partial sums
in memory (the loop over positions innermost, so each group of taps loads and stores them
again: conv.py's direct loops reached 18-20 GMAC/s on LeNet-5's layers, against ~70 for a
BLAS GEMM on the same VM, with 2 threads) or, with the positions unrolled into scalar
variables, stays scalar: LLVM's SLP vectoriser does not pack loop-carried scalars into vectors
(tried, 2026-12-01: 6-15x slower). Here the 6 x 16 sums are 12 vector registers (float32, 8
lanes; float64 uses 24 four-lane registers and spills, which only the float64 gradient
checks see), and each tap costs 2 vector loads of src, 6 broadcasts of w and 12 fused
multiply-adds. The loops it replaced fused the same products in the same order, so the
convolutions give the same bits as before.

Measured on the AMD EPYC VM (Zen 3, AVX2, 2 threads), medians of 12 interleaved rounds, the
loops they replace -> tile_fma (2026-12-01): forward, LeNet-5 conv1 (3 -> 6, 5x5, 32x32, batch
128) 1.92 -> 1.45 ms, conv2 (6 -> 16, 5x5, 14x14) 1.79 -> 1.10 ms; backward-data, conv2
1.57 -> 1.20 ms, 64 -> 64 3x3 pad 1 on 32x32 145 -> 113 ms; the DCGAN's first convolution
(columns, 1 -> 64, 4x4 stride 2, batch 128) forward 1.64 -> 1.29 ms, backward-data 1.50 ->
1.27 ms. Tiles of 4 rows (8 registers) were slower on conv1 (6 channels padded to 8), and 3
rows by 32 positions slower than the old loops there (1.48 -> 1.89 ms). The same idea for
the weight gradient (a 4 x 3 tile of dot products in registers, lanes added at the end) ran
0.98x / 1.22x / 1.17x on three layers and changed the bits (another summation order);
summing a whole batch slice per tile was slower still (0.73x on conv1: each tile streams the
slice from L2); not used.

Numba's on-disk cache keys a kernel by the content of the file it is defined in: kernels that
inline this file's code do not see it change. conv.py carries this file's hash
(``SIMD_SOURCE_SHA256``, checked by tests/test_kernels.py) so that editing this file changes
conv.py too, and its cached kernels are compiled again.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ROWS = 6  # output rows per tile: 6 x 2 float32 vectors = 12 accumulators of AVX2's 16 registers
WIDTH = 16  # positions per tile


class _Vectors:
    """IR helpers for one 256-bit vector type of ``dtype`` (8 float32 or 4 float64 lanes)."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        scalar = context.get_value_type(dtype)
        self.size = context.get_abi_sizeof(scalar)
        self.lanes = 32 // self.size
        self.type = ir.VectorType(scalar, self.lanes)
        name = f"llvm.fma.v{self.lanes}{'f32' if dtype == types.float32 else 'f64'}"
        self._fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.type, [self.type] * 3), name)

    @staticmethod
    def i64(n):
        return ir.Constant(ir.IntType(64), n)

    def fma(self, a, b, c):  # a*b + c, one rounding, in every lane
        return self.builder.call(self._fma, [a, b, c])

    def splat(self, value):  # the scalar in every lane
        b, undef = self.builder, ir.Constant(self.type, ir.Undefined)
        one = b.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
        return b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), self.lanes),
                                                        [0] * self.lanes))

    def _at(self, base, index):
        return self.builder.bitcast(self.builder.gep(base, [index]), self.type.as_pointer())

    def load(self, base, index):  # lanes consecutive elements from base[index] (unaligned)
        return self.builder.load(self._at(base, index), align=self.size)

    def store(self, value, base, index):
        self.builder.store(value, self._at(base, index), align=self.size)


def _loop(builder, count, body_fn, carried):
    """for t in range(count): carried = body_fn(t, carried); returns the final values (the
    initial ones when count <= 0). Values are LLVM SSA values (phis), never memory."""
    i64 = ir.IntType(64)
    entry = builder.block
    body = builder.append_basic_block("simd.loop")
    done = builder.append_basic_block("simd.done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), body, done)
    builder.position_at_end(body)
    t = builder.phi(i64)
    phis = [builder.phi(v.type) for v in carried]
    new = body_fn(t, phis)
    t_next = builder.add(t, ir.Constant(i64, 1))
    t.add_incoming(ir.Constant(i64, 0), entry)
    t.add_incoming(t_next, builder.block)
    for phi, first, value in zip(phis, carried, new):
        phi.add_incoming(first, entry)
        phi.add_incoming(value, builder.block)
    latch = builder.block
    builder.cbranch(builder.icmp_signed("<", t_next, count), body, done)
    builder.position_at_end(done)
    out = [builder.phi(v.type) for v in carried]  # phis first in the block, then the uses
    for phi, first, value in zip(out, carried, new):
        phi.add_incoming(first, entry)
        phi.add_incoming(value, latch)
    return out


def _float_arrays(*arrays):
    return (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
            and arrays[0].dtype in (types.float32, types.float64)
            and all(a.dtype == arrays[0].dtype for a in arrays))


def _offsets(*arrays):
    return all(isinstance(a, types.Array) and a.dtype == types.int64 for a in arrays)


def _ints(*values):
    return all(isinstance(v, types.Integer) for v in values)


def _unpack(context, builder, signature, args):
    """Each argument as the kernel code uses it: an array's data pointer, an integer as i64."""
    out = []
    for ty, value in zip(signature.args, args):
        if isinstance(ty, types.Array):
            out.append(context.make_array(ty)(context, builder, value).data)
        else:
            out.append(context.cast(builder, value, ty, types.int64))
    return out


def _columns(context, builder, ty, value):
    """The length of a 2-D array's rows."""
    return builder.extract_value(context.make_array(ty)(context, builder, value).shape, 1)


@intrinsic
def tile_fma(typingctx, src, offs, T, q0, w, r0, init, out, pitch):
    """See the module docstring; ``T`` taps, ``q0`` the first position, ``r0`` the first
    row, ``pitch`` the distance between out's rows. Bounds are the caller's to keep:
    src[offs[t] + q0 + 15], w[T - 1, r0 + 5], init[r0 + 5], out[5*pitch + q0 + 15]."""
    if not (_float_arrays(src, w, init, out) and _offsets(offs) and _ints(T, q0, r0, pitch)):
        return None
    sig = types.void(src, offs, T, q0, w, r0, init, out, pitch)

    def codegen(context, builder, signature, args):
        src_p, offs_p, T_v, q0_v, w_p, r0_v, init_p, out_p, pitch_v = _unpack(
            context, builder, signature, args)
        w_cols = _columns(context, builder, signature.args[4], args[4])
        V, i64 = _Vectors(context, builder, src.dtype), _Vectors.i64
        nvec = WIDTH // V.lanes
        first = [V.splat(builder.load(builder.gep(init_p, [builder.add(r0_v, i64(k))])))
                 for k in range(ROWS)]

        def tap(t, acc):  # 2 (float32) loads of src, 6 broadcasts of w, 12 FMAs
            start = builder.add(builder.load(builder.gep(offs_p, [t])), q0_v)
            x = [V.load(src_p, builder.add(start, i64(h * V.lanes))) for h in range(nvec)]
            w_row = builder.add(builder.mul(t, w_cols), r0_v)
            new = []
            for k in range(ROWS):
                wk = V.splat(builder.load(builder.gep(w_p, [builder.add(w_row, i64(k))])))
                new += [V.fma(wk, x[h], acc[k * nvec + h]) for h in range(nvec)]
            return new

        sums = _loop(builder, T_v, tap, [first[i // nvec] for i in range(ROWS * nvec)])
        for i, total in enumerate(sums):
            k, h = divmod(i, nvec)
            at = builder.add(builder.mul(i64(k), pitch_v), builder.add(q0_v, i64(h * V.lanes)))
            V.store(total, out_p, at)
        return context.get_dummy_value()

    return sig, codegen


def _rows_of_out(builder, V, out_p, orow_p, ostride, first_values=None):
    """Load (first_values None) or store the 6 x 16 entries out[orow[k] + q*ostride]: whole
    vectors when ostride == 1, element by element otherwise. Returns the loaded vectors."""
    i64, i32 = _Vectors.i64, ir.IntType(32)
    nvec = WIDTH // V.lanes
    rows = [builder.gep(out_p, [builder.load(builder.gep(orow_p, [i64(k)]))]) for k in range(ROWS)]
    unit = builder.icmp_signed("==", ostride, i64(1))
    loaded = []
    with builder.if_else(unit) as (contiguous, strided):
        with contiguous:
            for k in range(ROWS):
                for h in range(nvec):
                    if first_values is None:
                        loaded.append(V.load(rows[k], i64(h * V.lanes)))
                    else:
                        V.store(first_values[k * nvec + h], rows[k], i64(h * V.lanes))
            end_contiguous = builder.block
        with strided:
            scalar = []
            for k in range(ROWS):
                for h in range(nvec):
                    v = ir.Constant(V.type, ir.Undefined)
                    for lane in range(V.lanes):
                        at = builder.gep(rows[k], [builder.mul(ostride, i64(h * V.lanes + lane))])
                        if first_values is None:
                            v = builder.insert_element(v, builder.load(at), ir.Constant(i32, lane))
                        else:
                            value = first_values[k * nvec + h]
                            builder.store(builder.extract_element(value, ir.Constant(i32, lane)), at)
                    if first_values is None:
                        scalar.append(v)
            end_strided = builder.block
    if first_values is not None:
        return None
    merged = []
    for a, b in zip(loaded, scalar):
        phi = builder.phi(V.type)
        phi.add_incoming(a, end_contiguous)
        phi.add_incoming(b, end_strided)
        merged.append(phi)
    return merged


@intrinsic
def tile_gather_fma(typingctx, a, arow, aoff, b, boff, b0, T, out, orow, ostride):
    """Six rows of sixteen sums whose operands are gathered through offsets; for k < 6 and
    q < 16::

        out[orow[k] + q*ostride] += sum over t < T of a[arow[k] + aoff[t]] * b[boff[t] + b0 + q]

    taken as ``tile_fma``'s sums are: from out's value, t = 0, 1, ..., one fused multiply-add
    each, in 12 registers. ``aoff`` and ``boff`` are int64 arrays, or integers s that stand
    for the offsets t*s (no load per tap). All 96 entries of out are read before any is
    written, so rows that repeat another row's arow and orow (padding a last, partial tile)
    give the same value and write it twice. Per t: 2 vector loads of b, 6 broadcasts of a.
    conv.py's "gather" kernels (implicit GEMM) are this, with a and b the input, the output
    gradient or the packed weight. Offsets are element indices into the arrays read flat;
    bounds are the caller's to keep."""
    strides = [isinstance(o, types.Integer) for o in (aoff, boff)]
    if not (_float_arrays(a, b, out) and _offsets(arow, orow)
            and all(o.layout == "C" for o in (arow, orow))
            and all(s or (_offsets(o) and o.layout == "C") for s, o in zip(strides, (aoff, boff)))
            and _ints(b0, T, ostride)):
        return None
    sig = types.void(a, arow, aoff, b, boff, b0, T, out, orow, ostride)

    def codegen(context, builder, signature, args):
        a_p, arow_p, aoff_v, b_p, boff_v, b0_v, T_v, out_p, orow_p, ostride_v = _unpack(
            context, builder, signature, args)
        V, i64 = _Vectors(context, builder, a.dtype), _Vectors.i64
        nvec = WIDTH // V.lanes
        a_rows = [builder.gep(a_p, [builder.load(builder.gep(arow_p, [i64(k)]))])
                  for k in range(ROWS)]
        first = _rows_of_out(builder, V, out_p, orow_p, ostride_v)

        def offset(t, is_stride, value):
            return builder.mul(t, value) if is_stride else builder.load(builder.gep(value, [t]))

        def tap(t, acc):
            at = offset(t, strides[0], aoff_v)
            bt = builder.add(offset(t, strides[1], boff_v), b0_v)
            x = [V.load(b_p, builder.add(bt, i64(h * V.lanes))) for h in range(nvec)]
            new = []
            for k in range(ROWS):
                ak = V.splat(builder.load(builder.gep(a_rows[k], [at])))
                new += [V.fma(ak, x[h], acc[k * nvec + h]) for h in range(nvec)]
            return new

        sums = _loop(builder, T_v, tap, first)
        _rows_of_out(builder, V, out_p, orow_p, ostride_v, sums)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- tile_transpose

BLOCK = 8  # tile_transpose's block: 8 x 8 elements (float32: 8 vectors; float64: 16)


def _transpose_vectors(builder, rows):
    """The lanes x lanes transpose of ``rows`` (8 vectors of 8 lanes, or 4 of 4), as AVX's
    usual shuffle network: interleave pairs of rows, then pairs of pairs, then 128-bit halves
    (8 lanes: 24 shuffles)."""
    V = len(rows)

    def shuffle(a, b, lanes):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), V), lanes))

    if V == 4:
        lo, hi, first, second = [0, 4, 2, 6], [1, 5, 3, 7], [0, 1, 4, 5], [2, 3, 6, 7]
        t = [shuffle(rows[i], rows[i + 1], m) for i in (0, 2) for m in (lo, hi)]
        return [shuffle(t[0], t[2], first), shuffle(t[1], t[3], first),
                shuffle(t[0], t[2], second), shuffle(t[1], t[3], second)]
    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [shuffle(rows[i], rows[i + 1], m) for i in range(0, 8, 2) for m in (lo, hi)]
    evens, odds = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = [shuffle(t[i], t[i + 2], m) for i in (0, 1, 4, 5) for m in (evens, odds)]
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return ([shuffle(u[i], u[i + 4], first) for i in range(4)]
            + [shuffle(u[i], u[i + 4], second) for i in range(4)])


@intrinsic
def tile_transpose(typingctx, src, s0, sstride, dst, d0, dstride):
    """dst[d0 + c*dstride + r] = src[s0 + r*sstride + c] for r, c < 8 (``BLOCK``): one 8 x 8
    block of a layout change (NCHW <-> channels-last), in registers: 8 rows loaded as
    vectors, transposed by shuffles, stored as 8 vectors. The arrays are read flat; bounds
    are the caller's to keep. conv.py's ``_transpose`` builds whole planes from it (batch
    128, two threads, against scalar Numba loops: the DCGAN's backward-data crop 1.50 ->
    1.08 ms, its dy panels 0.61 -> 0.25 ms; AMD EPYC, 2026-12-01)."""
    if not (_float_arrays(src, dst) and _ints(s0, sstride, d0, dstride)):
        return None
    sig = types.void(src, s0, sstride, dst, d0, dstride)

    def codegen(context, builder, signature, args):
        src_p, s0_v, ss_v, dst_p, d0_v, ds_v = _unpack(context, builder, signature, args)
        V, i64 = _Vectors(context, builder, src.dtype), _Vectors.i64
        nb = BLOCK // V.lanes  # vectors per row of the block
        rows = [[V.load(src_p, builder.add(builder.add(s0_v, builder.mul(i64(r), ss_v)),
                                           i64(cb * V.lanes)))
                 for cb in range(nb)] for r in range(BLOCK)]
        for rb in range(nb):
            for cb in range(nb):
                columns = _transpose_vectors(builder, [rows[rb * V.lanes + i][cb]
                                                       for i in range(V.lanes)])
                for j, column in enumerate(columns):
                    c = cb * V.lanes + j
                    at = builder.add(builder.add(d0_v, builder.mul(i64(c), ds_v)),
                                     i64(rb * V.lanes))
                    V.store(column, dst_p, at)
        return context.get_dummy_value()

    return sig, codegen
