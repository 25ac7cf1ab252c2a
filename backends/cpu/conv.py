"""Convolution on NumPy arrays with Numba kernels: forward and both backwards.

Three methods, picked per call by ``_method``:

* direct, for stride 1 (LeNet, and all but many channels on small images): every (C, H, W)
  sample is zero-padded to (Hp, Wp) planes and flattened, and outputs are computed "wide",
  at row pitch Wp. Then the input under kernel tap (c, i, j) is one contiguous run,
  ``x_pad.flat[c*Hp*Wp + i*DH*Wp + j*DW :][:L]`` with L >= (OH-1)*Wp + OW, so every tap is a
  long vectorisable axpy; the Wp - OW columns between output rows are computed and
  dropped. Each pass takes two output channels and four taps, with zero channels and taps
  padding the counts. Parallel over the batch.
* columns, for strided convolutions with few taps per output (C*KH*KW <= 32: the DCGAN's
  first convolution and its generator's last transposed one): per sample, the input under
  every tap (c, i, j) at every output pixel is gathered into a small (taps, OH*OW) block that
  stays in cache, and Numba multiplies it with the weight in the same two-by-four passes as
  the direct loops, writing NCHW outputs (and gradients) with no transposes. BLAS does poorly
  on products with so few taps (K = 16: ~23 GMAC/s).
* im2row + BLAS, for other strided convolutions and for many channels on small images (DCGAN):
  the input is copied once to channels-last, zero-padded (N, Hp, Wp, C); then the window of
  output pixel (n, oh, ow) is KH*KW contiguous runs of C values, which Numba copies into row
  n*OH*OW + oh*OW + ow of rows (N*OH*OW, KH*KW*C), and large matmuls do the arithmetic
  (outputs transposed back to NCHW). Backward-data scatters the rows
  back the same way. Measured on the DCGAN discriminator's 64->128 4x4/2 conv (batch 64,
  14x14, quiet 2-core VM, 2026-12-01): gathering columns (C*KH*KW, N*OH*OW) straight from
  NCHW, 7-element strided runs, took 2.25 ms against 0.17 (channels-last copy) + 0.38
  (im2row); forward 6.3 -> 4.6 ms, backward-data 5.8 -> 4.3, backward-weight 6.3-6.4 -> 4.5.

Measurements and the reasons for these choices: benchmarks/kernels_cpu.py. Accumulation
order differs from the reference backend, so results agree to rounding.

Every kernel is compiled ``nogil`` and takes ``lo, hi`` first: the block of its outer loop
(samples, or partial sums for the weight gradient) that it computes; ``threads.parallel_for``
runs the blocks on dlx's threads at the same time.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ..base import conv2d_output_size
from .threads import num_threads, parallel_for, parallel_matmul

# "contract" lets LLVM fuse a*b + c into one FMA (one rounding instead of two: at least
# as accurate); "reassoc" lets it vectorise the dot products of the weight gradient.
_FMA = {"contract"}
_FMA_SUM = {"contract", "reassoc"}

# _NO_SLICE_COPIES: inside the kernels, arrays are copied element by element, never as
# ``dst[a:b] = src[c:d]``. Numba compiles an array-to-array slice assignment with its
# shape-mismatch error message, built from strings at run time, and that string machinery
# took ~2 s of the first compile of each kernel that used one (a one-line kernel: 2.28 s
# with a slice copy, 0.31 s with a loop; Numba 0.68, 2026-12-01). Scalar fills
# (``a[:] = 0``, 0.30 s) are fine; ``offs.max()`` (0.80 s) is not called in the kernels
# (the largest tap offset arrives in ``span``).

# Direct loops beat im2col + BLAS at stride 1 unless C*OC is large and OH*OW small.
_DIRECT_MAX_C_OC = 4096
_DIRECT_MIN_PIXELS = 256
# Strided convolutions with at most this many taps per output (C*KH*KW) compute each
# sample's columns and their products in Numba, straight into NCHW; more taps go to BLAS.
# Measured at batch 64, 4x4 stride 2, 64 output channels, one process, 2 threads (AMD EPYC,
# 2026-12-01; im2row + BLAS -> columns, ms): 16 taps (the DCGAN's first conv, 28 -> 14):
# forward 1.66 -> 0.55, backward-data 1.45 -> 0.45, backward-weight and bias 0.86 -> 0.45;
# 32 taps: 2.18 -> 1.32, 1.50 -> 0.84, 1.05 -> 0.83; 64 taps: 2.37 -> 1.61, 1.98 -> 1.64,
# 1.72 -> 2.53 (slower); 1024 taps (its second conv): 2.4-2.8x slower.
_COLUMNS_MAX_TAPS = 32
# im2row is done in batch chunks so that the rows stay under this many bytes.
_ROWS_BYTES = 64 << 20


def _check(name, *arrays):
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected float32 or float64 arrays, got {dtype}")
    for a in arrays[1:]:
        if a is not None and a.dtype != dtype:
            raise TypeError(f"{name}: mixed dtypes {dtype} and {a.dtype}")
    return [None if a is None else np.ascontiguousarray(a) for a in arrays]


def _sizes(x_shape, w_shape, stride, padding, dilation):
    N, C, H, W = x_shape
    OC, WC, KH, KW = w_shape
    if WC != C:
        raise ValueError(f"conv2d: input has {C} channels but the weight expects {WC}")
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"conv2d: output size {OH}x{OW} is empty for input {H}x{W}, kernel {KH}x{KW}, "
            f"stride {stride}, padding {padding}, dilation {dilation}"
        )
    return N, C, H, W, OC, KH, KW, OH, OW


def _method(C, OC, KH, KW, OH, OW, stride):
    """"direct" for stride 1, unless many channels meet a small image (then the wide rows and
    the im2col overhead tip the other way; measured in benchmarks/kernels_cpu.py); else
    "columns" for few taps (C*KH*KW <= _COLUMNS_MAX_TAPS), else "gemm" (im2row + BLAS)."""
    if tuple(stride) == (1, 1) and (C * OC <= _DIRECT_MAX_C_OC or OH * OW >= _DIRECT_MIN_PIXELS):
        return "direct"
    return "columns" if C * KH * KW <= _COLUMNS_MAX_TAPS else "gemm"


@functools.lru_cache(maxsize=256)
def _tap_offsets(C, KH, KW, Hp, Wp, dilation, multiple=1):
    """Flat offset of tap (c, i, j) in the padded, flattened planes, c*Hp*Wp + i*DH*Wp + j*DW,
    then zeros up to a multiple of ``multiple`` taps. Cached per geometry and shared: never
    written to (not marked read-only, which would make Numba compile another signature)."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    offs = (c * Hp * Wp + i * dilation[0] * Wp + j * dilation[1]).reshape(-1)
    out = np.zeros(-(-offs.size // multiple) * multiple, dtype=np.int64)
    out[: offs.size] = offs
    return out


def _wide_length(OH, OW, Wp):
    """Wide output positions per plane, (OH-1)*Wp + OW, rounded up to a whole number of
    16-float vectors so the inner loops need no scalar remainder."""
    return -(-((OH - 1) * Wp + OW) // 16) * 16


def _zero_pad(a, multiples):
    """``a`` (contiguous) with zeros appended so that axis k has a multiple of multiples[k]."""
    shape = tuple(n + -n % m for n, m in zip(a.shape, multiples))
    if shape == a.shape:
        return np.ascontiguousarray(a)
    out = np.zeros(shape, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


# ----------------------------------------------------------------------------- direct


@njit(cache=True)
def _pad_planes(src, ph, pw, Hp, Wp, dst):
    """dst (>= C*Hp*Wp,) flat = src (C, H, W) zero-padded by (ph, pw), then zeros."""
    C, H, W = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(H):
            base = (c * Hp + h + ph) * Wp + pw
            row = src[c, h]
            for w in range(W):  # an element loop on 1-D views: see _NO_SLICE_COPIES
                dst[base + w] = row[w]


@njit(cache=True)
def _widen(src, Wp, dst):
    """dst (C, L) = rows of src (C, OH, OW) at pitch Wp, the gaps and the tail zero."""
    C, OH, OW = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(OH):
            row, out = src[c, h], dst[c]
            for w in range(OW):
                out[h * Wp + w] = row[w]


@njit(nogil=True, cache=True, fastmath=_FMA)
def _direct_forward(lo, hi, x, wt, b, offs, span, ph, pw, Hp, Wp, L, y, xw, acc):
    """y (N, OC, OH, OW) = b[oc] + sum over taps t of wt[oc, t] * x_pad[n].flat[offs[t] + q].

    q runs over L wide output positions oh*Wp + ow (L a multiple of the vector width, the
    excess computed on zeros and dropped); span = max(offs) + L, the padded plane's length.
    Zeros pad wt (OC2, T4) and b (OC2,) to an even number of rows and T4 = C*KH*KW rounded
    up to a multiple of 4 (offsets 0), so every pass is two output channels by four taps.
    Work buffers: xw (span,) and acc (2, L).
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    OC2, T = wt.shape
    a0 = acc[0]
    a1 = acc[1]
    for n in range(lo, hi):
        _pad_planes(x[n], ph, pw, Hp, Wp, xw)
        for oc in range(0, OC2, 2):
            a0[:] = b[oc]
            a1[:] = b[oc + 1]
            for t in range(0, T, 4):
                x0 = xw[offs[t] : offs[t] + L]
                x1 = xw[offs[t + 1] : offs[t + 1] + L]
                x2 = xw[offs[t + 2] : offs[t + 2] + L]
                x3 = xw[offs[t + 3] : offs[t + 3] + L]
                u0, u1, u2, u3 = wt[oc, t], wt[oc, t + 1], wt[oc, t + 2], wt[oc, t + 3]
                v0, v1 = wt[oc + 1, t], wt[oc + 1, t + 1]
                v2, v3 = wt[oc + 1, t + 2], wt[oc + 1, t + 3]
                for q in range(L):
                    e0, e1, e2, e3 = x0[q], x1[q], x2[q], x3[q]
                    a0[q] = (((a0[q] + u0 * e0) + u1 * e1) + u2 * e2) + u3 * e3
                    a1[q] = (((a1[q] + v0 * e0) + v1 * e1) + v2 * e2) + v3 * e3
            for k in range(min(2, OC - oc)):
                a = acc[k]
                for oh in range(OH):
                    out = y[n, oc + k, oh]
                    for ow in range(OW):
                        out[ow] = a[oh * Wp + ow]


@njit(nogil=True, cache=True, fastmath=_FMA)
def _direct_backward_data(lo, hi, dy, wt, offs, span, ph, pw, Hp, Wp, L, dx, dyw, acc):
    """dx (N, C, H, W): dy[n, oc] (wide) times wt[c, k, oc] added at offset offs[k] of plane c.

    The adjoint of ``_direct_forward``, two input channels by four output channels per pass:
    wt (C2, KH*KW, OC4) is the weight transposed and zero-padded to an even C2 and OC4 a
    multiple of 4 (zero rows of dy_wide match the padding); offs (KH*KW,) = i*DH*Wp + j*DW.
    Work buffers: dyw (OC4, L), zero (rows OC.. stay zero; _widen rewrites the rest), and
    acc (2, span).
    """
    OC = dy.shape[1]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    C2, K, OC4 = wt.shape
    for n in range(lo, hi):
        _widen(dy[n], Wp, dyw[:OC])
        for c in range(0, C2, 2):
            acc[:] = 0
            for k in range(K):
                a0 = acc[0, offs[k] : offs[k] + L]
                a1 = acc[1, offs[k] : offs[k] + L]
                for oc in range(0, OC4, 4):
                    d0, d1, d2, d3 = dyw[oc], dyw[oc + 1], dyw[oc + 2], dyw[oc + 3]
                    u0, u1 = wt[c, k, oc], wt[c, k, oc + 1]
                    u2, u3 = wt[c, k, oc + 2], wt[c, k, oc + 3]
                    v0, v1 = wt[c + 1, k, oc], wt[c + 1, k, oc + 1]
                    v2, v3 = wt[c + 1, k, oc + 2], wt[c + 1, k, oc + 3]
                    for q in range(L):
                        e0, e1, e2, e3 = d0[q], d1[q], d2[q], d3[q]
                        a0[q] = (((a0[q] + u0 * e0) + u1 * e1) + u2 * e2) + u3 * e3
                        a1[q] = (((a1[q] + v0 * e0) + v1 * e1) + v2 * e2) + v3 * e3
            for k in range(min(2, C - c)):
                a = acc[k]
                for h in range(H):
                    base = (h + ph) * Wp + pw
                    out = dx[n, c + k, h]
                    for w in range(W):
                        out[w] = a[base + w]


@njit(nogil=True, cache=True, fastmath=_FMA_SUM)
def _direct_backward_weight(lo, hi, x, dy, offs, span, ph, pw, Hp, Wp, L, parts, xw, dyw):
    """parts[p] (OC2, T4) += dw summed over the p-th slice of the batch (padded as in forward).

    dw[oc, t] = sum over n and wide positions q of dy_wide[n, oc, q] * x_pad[n].flat[offs[t] + q]
    (the gaps of dy_wide are zero). One slice per thread, so no two threads write one sum.
    Work buffers: xw (span,) and dyw (OC2, L), zero (rows OC.. stay zero).
    """
    N, OC = x.shape[0], dy.shape[1]
    P, OC2, T = parts.shape
    for p in range(lo, hi):
        dw = parts[p]
        for n in range(p * N // P, (p + 1) * N // P):
            _pad_planes(x[n], ph, pw, Hp, Wp, xw)
            _widen(dy[n], Wp, dyw[:OC])
            for oc in range(0, OC2, 2):
                d0 = dyw[oc]
                d1 = dyw[oc + 1]
                for t in range(0, T, 4):
                    x0 = xw[offs[t] : offs[t] + L]
                    x1 = xw[offs[t + 1] : offs[t + 1] + L]
                    x2 = xw[offs[t + 2] : offs[t + 2] + L]
                    x3 = xw[offs[t + 3] : offs[t + 3] + L]
                    s0, s1, s2, s3 = dw[oc, t], dw[oc, t + 1], dw[oc, t + 2], dw[oc, t + 3]
                    r0, r1 = dw[oc + 1, t], dw[oc + 1, t + 1]
                    r2, r3 = dw[oc + 1, t + 2], dw[oc + 1, t + 3]
                    for q in range(L):
                        e0, e1 = d0[q], d1[q]
                        f0, f1, f2, f3 = x0[q], x1[q], x2[q], x3[q]
                        s0 += e0 * f0
                        s1 += e0 * f1
                        s2 += e0 * f2
                        s3 += e0 * f3
                        r0 += e1 * f0
                        r1 += e1 * f1
                        r2 += e1 * f2
                        r3 += e1 * f3
                    dw[oc, t], dw[oc, t + 1], dw[oc, t + 2], dw[oc, t + 3] = s0, s1, s2, s3
                    dw[oc + 1, t], dw[oc + 1, t + 1] = r0, r1
                    dw[oc + 1, t + 2], dw[oc + 1, t + 3] = r2, r3


# ----------------------------------------------------------------------------- columns
# Three kernels of their own, ~4 s of first-run compile (a DCGAN's first step, cold cache:
# 4.0-4.4 -> 8.1-8.2 s; AMD EPYC, 2026-12-01), repaid within its first epoch. Tried and
# dropped: each sample's columns as a one-channel image of T4 rows at pitch L, fed to the
# direct loops above (no new kernels but the gather and its adjoint): 1.7-2.3x slower than
# these at the DCGAN's first conv (forward 1.46 against 0.86 ms, backward-data 1.58 / 0.88,
# backward-weight and bias 1.83 / 0.81; im2row + BLAS 1.80 / 2.08 / 1.86; one process,
# per-round minimums of 15 interleaved rounds). The kernels repeat the direct loops'
# two-by-four passes inline on purpose: the same passes as shared njit helpers (one call per
# pass) gave the same bits but ran slower, forward + backward, 12 interleaved rounds: LeNet-5
# conv2 5.8 -> 8.4 ms, conv1 8.5 -> 9.1, the DCGAN's first conv 2.7 -> 3.2.


@njit(cache=True)
def _columns(xn, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, cols):
    """cols[(c*KH + i)*KW + j, oh*OW + ow] = xn[c, oh*SH - PH + i*DH, ow*SW - PW + j*DW], zero
    where that is outside the image (xn is (C, H, W), unpadded); other entries of cols are not
    touched."""
    C, H, W = xn.shape
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                col = cols[(c * KH + i) * KW + j]
                shift = j * DW - PW  # w = ow*SW + shift; inside for ow in [first, stop)
                first = min(OW, max(0, -(shift // SW)))
                stop = max(first, min(OW, (W - 1 - shift) // SW + 1))
                for oh in range(OH):
                    h = oh * SH - PH + i * DH
                    base = oh * OW
                    if h < 0 or h >= H:
                        for ow in range(OW):
                            col[base + ow] = 0
                        continue
                    row = xn[c, h]
                    for ow in range(first):
                        col[base + ow] = 0
                    for ow in range(first, stop):
                        col[base + ow] = row[ow * SW + shift]
                    for ow in range(stop, OW):
                        col[base + ow] = 0


@njit(nogil=True, cache=True, fastmath=_FMA)
def _columns_forward(lo, hi, x, wt, b, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, L, y, cols,
                     acc):
    """y (N, OC, OH*OW) = b + wt @ the columns of x[n] (``_columns``), sample by sample.

    wt (OC2, T4) and b (OC2,) are zero-padded as in ``_direct_forward``; a sample's columns
    (T4, L) have zero rows from T = C*KH*KW and zeros from position OH*OW to L (a multiple
    of 16), so every pass is two output channels by four taps over whole vectors. Work
    buffers: cols (T4, L), zero, and acc (2, L)."""
    OC = y.shape[1]
    OC2, T4 = wt.shape
    S = OH * OW
    a0 = acc[0]
    a1 = acc[1]
    for n in range(lo, hi):
        _columns(x[n], KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, cols)
        for oc in range(0, OC2, 2):
            a0[:] = b[oc]
            a1[:] = b[oc + 1]
            for t in range(0, T4, 4):
                x0, x1, x2, x3 = cols[t], cols[t + 1], cols[t + 2], cols[t + 3]
                u0, u1, u2, u3 = wt[oc, t], wt[oc, t + 1], wt[oc, t + 2], wt[oc, t + 3]
                v0, v1 = wt[oc + 1, t], wt[oc + 1, t + 1]
                v2, v3 = wt[oc + 1, t + 2], wt[oc + 1, t + 3]
                for q in range(L):
                    e0, e1, e2, e3 = x0[q], x1[q], x2[q], x3[q]
                    a0[q] = (((a0[q] + u0 * e0) + u1 * e1) + u2 * e2) + u3 * e3
                    a1[q] = (((a1[q] + v0 * e0) + v1 * e1) + v2 * e2) + v3 * e3
            for k in range(min(2, OC - oc)):
                a, out = acc[k], y[n, oc + k]
                for q in range(S):
                    out[q] = a[q]


@njit(nogil=True, cache=True, fastmath=_FMA_SUM)
def _columns_backward_weight(lo, hi, x, dy, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, L, parts,
                             bias_parts, cols, dyw):
    """parts[p] (OC2, T4) += dy[n] (OC, OH*OW) @ the columns of x[n], transposed, and
    bias_parts[p, oc] += the sum of dy[n, oc], over the p-th slice of the batch (one slice
    per thread, so no two threads write one sum). Padding as in ``_columns_forward``; work
    buffers: cols (T4, L) and dyw (OC2, L), zero."""
    N, OC = x.shape[0], dy.shape[1]
    P, OC2, T4 = parts.shape
    S = OH * OW
    for p in range(lo, hi):
        dw = parts[p]
        for n in range(p * N // P, (p + 1) * N // P):
            _columns(x[n], KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, cols)
            for oc in range(OC):
                src, dst = dy[n, oc], dyw[oc]
                s = bias_parts[p, oc]
                for q in range(S):
                    v = src[q]
                    dst[q] = v
                    s += v
                bias_parts[p, oc] = s
            for oc in range(0, OC2, 2):
                d0 = dyw[oc]
                d1 = dyw[oc + 1]
                for t in range(0, T4, 4):
                    x0, x1, x2, x3 = cols[t], cols[t + 1], cols[t + 2], cols[t + 3]
                    s0, s1, s2, s3 = dw[oc, t], dw[oc, t + 1], dw[oc, t + 2], dw[oc, t + 3]
                    r0, r1 = dw[oc + 1, t], dw[oc + 1, t + 1]
                    r2, r3 = dw[oc + 1, t + 2], dw[oc + 1, t + 3]
                    for q in range(L):
                        e0, e1 = d0[q], d1[q]
                        f0, f1, f2, f3 = x0[q], x1[q], x2[q], x3[q]
                        s0 += e0 * f0
                        s1 += e0 * f1
                        s2 += e0 * f2
                        s3 += e0 * f3
                        r0 += e1 * f0
                        r1 += e1 * f1
                        r2 += e1 * f2
                        r3 += e1 * f3
                    dw[oc, t], dw[oc, t + 1], dw[oc, t + 2], dw[oc, t + 3] = s0, s1, s2, s3
                    dw[oc + 1, t], dw[oc + 1, t + 1] = r0, r1
                    dw[oc + 1, t + 2], dw[oc + 1, t + 3] = r2, r3


@njit(nogil=True, cache=True, fastmath=_FMA)
def _columns_backward_data(lo, hi, dy, wt, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, L, dx, dyw,
                           acc):
    """dx (N, C, H, W): the adjoint of ``_columns_forward``. Per sample, the columns'
    gradient (two taps at a time) = wt (T2, OC4) @ dy[n] (OC4, L), two taps by four output
    channels per pass (wt: the weight as (T, OC), zero-padded to an even T2 and OC4 a
    multiple of 4; dy's rows from OC and positions from OH*OW zero), then each tap's
    gradient is added back where ``_columns`` read it. Work buffers: dyw (OC4, L), zero, and
    acc (2, L)."""
    OC = dy.shape[1]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    T2, OC4 = wt.shape
    T = C * KH * KW
    S = OH * OW
    a0 = acc[0]
    a1 = acc[1]
    for n in range(lo, hi):
        for oc in range(OC):
            src, dst = dy[n, oc], dyw[oc]
            for q in range(S):
                dst[q] = src[q]
        dn = dx[n]
        dn[:] = 0
        for t in range(0, T2, 2):
            a0[:] = 0
            a1[:] = 0
            for oc in range(0, OC4, 4):
                d0, d1, d2, d3 = dyw[oc], dyw[oc + 1], dyw[oc + 2], dyw[oc + 3]
                u0, u1, u2, u3 = wt[t, oc], wt[t, oc + 1], wt[t, oc + 2], wt[t, oc + 3]
                v0, v1 = wt[t + 1, oc], wt[t + 1, oc + 1]
                v2, v3 = wt[t + 1, oc + 2], wt[t + 1, oc + 3]
                for q in range(L):
                    e0, e1, e2, e3 = d0[q], d1[q], d2[q], d3[q]
                    a0[q] = (((a0[q] + u0 * e0) + u1 * e1) + u2 * e2) + u3 * e3
                    a1[q] = (((a1[q] + v0 * e0) + v1 * e1) + v2 * e2) + v3 * e3
            for k in range(min(2, T - t)):
                tap = t + k
                c, i, j = tap // (KH * KW), (tap // KW) % KH, tap % KW
                a = acc[k]
                shift = j * DW - PW
                first = min(OW, max(0, -(shift // SW)))
                stop = max(first, min(OW, (W - 1 - shift) // SW + 1))
                for oh in range(OH):
                    h = oh * SH - PH + i * DH
                    if h < 0 or h >= H:
                        continue
                    row = dn[c, h]
                    base = oh * OW
                    for ow in range(first, stop):
                        row[ow * SW + shift] += a[base + ow]


def _columns_geometry(KH, KW, stride, padding, dilation, OH, OW):
    return (KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], OH, OW)


def _columns_length(OH, OW):
    """Positions per sample's columns: OH*OW rounded up to whole 16-float vectors."""
    return -(-(OH * OW) // 16) * 16


def _columns_conv_forward(x, w, b, stride, padding, dilation, OH, OW):
    N = x.shape[0]
    OC, C, KH, KW = w.shape
    wt = _zero_pad(w.reshape(OC, C * KH * KW), (2, 4))
    b2 = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (2,))
    y = np.empty((N, OC, OH * OW), dtype=x.dtype)
    L = _columns_length(OH, OW)
    parallel_for(_columns_forward, N, x, wt, b2,
                 *_columns_geometry(KH, KW, stride, padding, dilation, OH, OW), L, y,
                 scratch=[(wt.shape[1:] + (L,), x.dtype), ((2, L), x.dtype)])
    return y.reshape(N, OC, OH, OW)


def _columns_conv_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW):
    N, OC = dy.shape[:2]
    _, C, KH, KW = w.shape
    wt = _zero_pad(w.reshape(OC, C * KH * KW).T, (2, 4))  # (T2, OC4)
    dx = np.empty(x_shape, dtype=dy.dtype)
    L = _columns_length(OH, OW)
    parallel_for(_columns_backward_data, N, dy.reshape(N, OC, OH * OW), wt,
                 *_columns_geometry(KH, KW, stride, padding, dilation, OH, OW), L, dx,
                 scratch=[((wt.shape[1], L), dy.dtype), ((2, L), dy.dtype)])
    return dx


def _columns_conv_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW):
    """(dw, db): both from one pass over the batch."""
    N = x.shape[0]
    OC, C, KH, KW = w_shape
    T = C * KH * KW
    P = max(1, min(N, num_threads()))
    parts = np.zeros((P, OC + OC % 2, -(-T // 4) * 4), dtype=x.dtype)
    bias_parts = np.zeros((P, OC), dtype=x.dtype)
    L = _columns_length(OH, OW)
    parallel_for(_columns_backward_weight, P, x, dy.reshape(N, OC, OH * OW),
                 *_columns_geometry(KH, KW, stride, padding, dilation, OH, OW), L, parts,
                 bias_parts, scratch=[((parts.shape[2], L), x.dtype), ((parts.shape[1], L), x.dtype)])
    dw = np.ascontiguousarray(parts.sum(axis=0)[:OC, :T]).reshape(w_shape)
    return dw, bias_parts.sum(axis=0)


# ----------------------------------------------------------------------------- im2row


@njit(nogil=True, cache=True)
def _pad_nhwc(lo, hi, x, PH, PW, xp):
    """xp (N, Hp, Wp, C) = x (N, C, H, W) moved to channels-last and zero-padded by (PH, PW)."""
    N, C, H, W = x.shape
    Hp, Wp = xp.shape[1], xp.shape[2]
    for n in range(lo, hi):
        xn, pn = x[n], xp[n]
        for h in range(Hp):
            if h < PH or h >= PH + H:
                pn[h] = 0
                continue
            for w in range(Wp):
                if w < PW or w >= PW + W:
                    pn[h, w] = 0
                else:
                    for c in range(C):
                        pn[h, w, c] = xn[c, h - PH, w - PW]
    return xp


@njit(nogil=True, cache=True)
def _crop_nchw(lo, hi, xp, PH, PW, x):
    """x (N, C, H, W) = the interior of xp (N, Hp, Wp, C), back in channels-first order.
    Reads each pixel's C values as one run and scatters them (the DCGAN's (64, 64, 14, 14),
    one thread: 0.31 ms, against 0.79 gathering each output plane; AMD EPYC, 2026-12-01)."""
    N, C, H, W = x.shape
    for n in range(lo, hi):
        xn = x[n]
        for h in range(H):
            src = xp[n, PH + h]
            for w in range(W):
                s = src[PW + w]
                for c in range(C):
                    xn[c, h, w] = s[c]
    return x


@njit(nogil=True, cache=True)
def _im2row(lo, hi, xp, KH, KW, SH, SW, DH, DW, OH, OW, rows):
    """rows (N*OH*OW, KH*KW*C): row n*OH*OW + oh*OW + ow, columns (i*KW + j)*C .. + C, hold
    xp[n, oh*SH + i*DH, ow*SW + j*DW, :] (xp padded and channels-last: one run per tap)."""
    C = xp.shape[3]
    L = OH * OW
    for n in range(lo, hi):
        for oh in range(OH):
            for ow in range(OW):
                row = rows[n * L + oh * OW + ow]
                for i in range(KH):
                    for j in range(KW):
                        src = xp[n, oh * SH + i * DH, ow * SW + j * DW]
                        base = (i * KW + j) * C
                        for c in range(C):
                            row[base + c] = src[c]
    return rows


@njit(nogil=True, cache=True)
def _row2im(lo, hi, rows, KH, KW, SH, SW, DH, DW, OH, OW, dxp):
    """dxp (N, Hp, Wp, C) = the sum of every rows entry at the padded position it came from
    (the adjoint of ``_im2row``)."""
    C = dxp.shape[3]
    L = OH * OW
    for n in range(lo, hi):
        dn = dxp[n]
        dn[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = rows[n * L + oh * OW + ow]
                for i in range(KH):
                    for j in range(KW):
                        dst = dn[oh * SH + i * DH, ow * SW + j * DW]
                        base = (i * KW + j) * C
                        for c in range(C):
                            dst[c] += row[base + c]
    return dxp


def _batches(N, per_sample_bytes):
    step = max(1, _ROWS_BYTES // max(1, per_sample_bytes))
    return [(n, min(N, n + step)) for n in range(0, N, step)]


def _geometry(KH, KW, stride, dilation, OH, OW):
    return (KH, KW, stride[0], stride[1], dilation[0], dilation[1], OH, OW)


def _rows_of(x, padding, geo):
    """im2row of x (n, C, H, W): (n*OH*OW, KH*KW*C)."""
    n, C, H, W = x.shape
    KH, KW, OH, OW = geo[0], geo[1], geo[6], geo[7]
    xp = np.empty((n, H + 2 * padding[0], W + 2 * padding[1], C), dtype=x.dtype)
    parallel_for(_pad_nhwc, n, x, padding[0], padding[1], xp)
    rows = np.empty((n * OH * OW, KH * KW * C), dtype=x.dtype)
    parallel_for(_im2row, n, xp, *geo, rows)
    return rows


def _dy_t(dy):
    """dy (n, OC, OH, OW) as (OC, n*OH*OW): whole OH*OW planes moved, no element transposed.
    The backward GEMMs take it (or its transpose, as BLAS's flag) at a measured 2-15 % less
    than from rows (n*OH*OW, OC) (one thread, 2026-12-01, the DCGAN's convolutions)."""
    n, OC = dy.shape[:2]
    return np.ascontiguousarray(dy.reshape(n, OC, -1).transpose(1, 0, 2)).reshape(OC, -1)


def _w_rows(w):
    """w (OC, C, KH, KW) as (OC, KH*KW*C): its taps in im2row's column order (i, j, c)."""
    OC = w.shape[0]
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(OC, -1)


def _gemm_forward(x, w, b, stride, padding, dilation, OH, OW):
    """(y, rows): y by im2row + GEMM, and the rows of the whole batch when they were made in
    one piece (else None), for the weight gradient of the same x to reuse."""
    N = x.shape[0]
    OC, C, KH, KW = w.shape
    T, L = C * KH * KW, OH * OW
    geo = _geometry(KH, KW, stride, dilation, OH, OW)
    w_rows = _w_rows(w)
    y = np.empty((N, OC, L), dtype=x.dtype)
    chunks = _batches(N, T * L * x.itemsize)
    for n0, n1 in chunks:
        rows = _rows_of(x[n0:n1], padding, geo)
        if T < OC:  # few taps (one input channel): (OC, T) @ (T, n*L) is BLAS's better shape
            # (2.30 -> 1.68 ms on the DCGAN's first conv, one thread), then whole planes move
            y_t = parallel_matmul(w_rows, rows.T).reshape(OC, n1 - n0, L).transpose(1, 0, 2)
        else:  # (n*L, T) @ (T, OC) (8.1 against 9.1 ms on its second)
            y_t = parallel_matmul(rows, w_rows.T).reshape(n1 - n0, L, OC).transpose(0, 2, 1)
        if b is None:
            y[n0:n1] = y_t
        else:
            np.add(y_t, b.reshape(OC, 1), out=y[n0:n1])
    return y.reshape(N, OC, OH, OW), (rows if len(chunks) == 1 else None)


def _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW, dyt):
    """dx by GEMM + row2im; dyt = _dy_t(dy)."""
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    T, L = C * KH * KW, OH * OW
    geo = _geometry(KH, KW, stride, dilation, OH, OW)
    w_rows = _w_rows(w)
    dx = np.empty(x_shape, dtype=dy.dtype)
    for n0, n1 in _batches(N, T * L * dy.itemsize):
        rows = parallel_matmul(dyt[:, n0 * L:n1 * L].T, w_rows)  # (n*L, T)
        dxp = np.empty((n1 - n0, H + 2 * padding[0], W + 2 * padding[1], C), dtype=dy.dtype)
        parallel_for(_row2im, n1 - n0, rows, *geo, dxp)
        parallel_for(_crop_nchw, n1 - n0, dxp, padding[0], padding[1], dx[n0:n1])
    return dx


def _gemm_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW, dyt, kept):
    """dw by GEMM over the im2row rows of x: ``kept`` when it holds them (from the forward,
    whole batch), else gathered again per chunk; dyt = _dy_t(dy)."""
    N = x.shape[0]
    OC, C, KH, KW = w_shape
    T, L = C * KH * KW, OH * OW
    if isinstance(kept, np.ndarray) and kept.shape == (N * L, T) and kept.dtype == x.dtype:
        dw = parallel_matmul(dyt, kept)
    else:
        geo = _geometry(KH, KW, stride, dilation, OH, OW)
        dw = np.zeros((OC, T), dtype=x.dtype)
        for n0, n1 in _batches(N, T * L * x.itemsize):
            dw += parallel_matmul(dyt[:, n0 * L:n1 * L], _rows_of(x[n0:n1], padding, geo))
    return np.ascontiguousarray(dw.reshape(OC, KH, KW, C).transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- the seam


def conv2d(x, w, b, stride, padding, dilation):
    """y (N, OC, OH, OW) = w (OC, C, KH, KW) cross-correlated with x (N, C, H, W), plus b (OC,)."""
    return conv2d_forward(x, w, b, stride, padding, dilation)[0]


def conv2d_forward(x, w, b, stride, padding, dilation):
    """(y, kept): ``conv2d``, and on the im2row path the rows of x (N*OH*OW, KH*KW*C) when
    they were made in one piece (batches under _ROWS_BYTES), for ``conv2d_backward_weight``
    of the same x to reuse instead of gathering them again (else None). The DCGAN step
    gathers 14 row matrices, 6 of them again for a weight gradient; reusing them costs the
    rows' memory (12.8 MB for the discriminator's second convolution) until backward."""
    x, w, b = _check("conv2d", x, w, b)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    method = _method(C, OC, KH, KW, OH, OW, stride)
    if method == "columns":
        return _columns_conv_forward(x, w, b, stride, padding, dilation, OH, OW), None
    if method == "gemm":
        return _gemm_forward(x, w, b, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _zero_pad(w.reshape(OC, C * KH * KW), (2, 4))
    b2 = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (2,))
    offs = _tap_offsets(C, KH, KW, Hp, Wp, tuple(dilation), 4)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    L = _wide_length(OH, OW, Wp)
    span = int(offs.max()) + L
    parallel_for(_direct_forward, N, x, wt, b2, offs, span, *padding, Hp, Wp, L, y,
                 scratch=[((span,), x.dtype), ((2, L), x.dtype)])
    return y, None


def conv2d_backward_data(dy, w, x_shape, stride, padding, dilation):
    """dL/dx (N, C, H, W) from dL/dy (N, OC, OH, OW)."""
    dy, w = _check("conv2d_backward_data", dy, w)
    x_shape = tuple(int(s) for s in x_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x_shape, w.shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_data: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    method = _method(C, OC, KH, KW, OH, OW, stride)
    if method == "columns":
        return _columns_conv_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW)
    if method == "gemm":
        return _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW, _dy_t(dy))
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _zero_pad(w.reshape(OC, C, KH * KW).transpose(1, 2, 0), (2, 1, 4))  # (C2, KH*KW, OC4)
    offs = _tap_offsets(1, KH, KW, Hp, Wp, tuple(dilation))
    dx = np.empty(x_shape, dtype=dy.dtype)
    L = _wide_length(OH, OW, Wp)
    span = int(offs.max()) + L
    parallel_for(_direct_backward_data, N, dy, wt, offs, span, *padding, Hp, Wp, L, dx,
                 scratch=[((wt.shape[2], L), dy.dtype), ((2, span), dy.dtype)])
    return dx


def conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation, kept=None):
    """dL/dw (OC, C, KH, KW) from the input x and dL/dy; ``kept``: from ``conv2d_forward`` of
    this x, or None."""
    x, dy = _check("conv2d_backward_weight", x, dy)
    w_shape = tuple(int(s) for s in w_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w_shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_weight: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    method = _method(C, OC, KH, KW, OH, OW, stride)
    if method == "columns":
        return _columns_conv_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW)[0]
    if method == "gemm":
        return _gemm_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW, _dy_t(dy),
                                     kept)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    T = C * KH * KW
    offs = _tap_offsets(C, KH, KW, Hp, Wp, tuple(dilation), 4)
    P = max(1, min(N, num_threads()))
    parts = np.zeros((P, OC + OC % 2, offs.size), dtype=x.dtype)
    L = _wide_length(OH, OW, Wp)
    span = int(offs.max()) + L
    parallel_for(_direct_backward_weight, P, x, dy, offs, span, *padding, Hp, Wp, L, parts,
                 scratch=[((span,), x.dtype), ((parts.shape[1], L), x.dtype)])
    return np.ascontiguousarray(parts.sum(axis=0)[:OC, :T]).reshape(w_shape)


def conv2d_backward(x, w, dy, stride, padding, dilation, need_dx=True, need_db=True, kept=None):
    """(dx, dw, db) as ``Backend.conv2d_backward``; on the im2row path dy is moved to
    (OC, N*OH*OW) once for both GEMMs, not once each; on the columns path the bias gradient
    comes from the weight gradient's pass over dy."""
    x, w, dy = _check("conv2d_backward", x, w, dy)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    method = _method(C, OC, KH, KW, OH, OW, stride)
    if method == "columns":
        geometry = (stride, padding, dilation, OH, OW)
        dx = _columns_conv_backward_data(dy, w, x.shape, *geometry) if need_dx else None
        dw, db = _columns_conv_backward_weight(x, dy, w.shape, *geometry)
        return dx, dw, (db if need_db else None)
    if method == "direct":
        dx = conv2d_backward_data(dy, w, x.shape, stride, padding, dilation) if need_dx else None
        dw = conv2d_backward_weight(x, dy, w.shape, stride, padding, dilation)
    else:
        geometry, dyt = (stride, padding, dilation, OH, OW), _dy_t(dy)
        dx = _gemm_backward_data(dy, w, x.shape, *geometry, dyt) if need_dx else None
        dw = _gemm_backward_weight(x, dy, w.shape, *geometry, dyt, kept)
    return dx, dw, (dy.sum(axis=(0, 2, 3)) if need_db else None)
