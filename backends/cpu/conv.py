"""Convolution on NumPy arrays with Numba kernels: forward and both backwards.

Three methods, picked per call by ``_method``:

* direct, for stride 1 (LeNet, and all but many channels on small images): every (C, H, W)
  sample is zero-padded to (Hp, Wp) planes and flattened, and outputs are computed "wide",
  at row pitch Wp. Then the input under kernel tap (c, i, j) is one contiguous run,
  ``x_pad.flat[c*Hp*Wp + i*DH*Wp + j*DW :][:L]`` with L >= (OH-1)*Wp + OW, so every tap is a
  long contiguous run; the Wp - OW columns between output rows are computed and dropped.
  ``simd.tile_fma`` sums the taps for 16 wide positions of 6 output channels in vector
  registers (zero channels pad the count to a multiple of 6); backward-data is the same
  tile over the turned-around weight, backward-weight two output channels by four taps of
  vectorised dot products. Parallel over the batch.
* columns, for strided convolutions with few taps per output (C*KH*KW <= 32: the DCGAN's
  first convolution and its generator's last transposed one): per sample, the input under
  every tap (c, i, j) at every output pixel is gathered into a small (taps, OH*OW) block that
  stays in cache, and ``tile_fma`` multiplies it with the weight (backward-weight: the direct
  loops' two-by-four dot products), writing NCHW outputs (and gradients) with no
  transposes. BLAS does poorly on products with so few taps (K = 16: ~23 GMAC/s).
* gather (implicit GEMM), for other strided convolutions and for many channels on small
  images (the DCGAN's 64 <-> 128 layers): the products of im2row + GEMM without the row
  matrix. The input is copied once to channels-last, zero-padded, channels padded to whole
  16-float vectors (N, Hp, Wp, Cp); ``simd.tile_gather_fma`` then reads each output
  position's window in place through offsets (its tap (i, j, c) at (i*DH*Wp + j*DW)*Cp + c
  from the window's start), 6 x 16 sums per call, and writes NCHW outputs, adds
  backward-data's window entries back in place (the scatter of row2im) and sums the weight
  gradient per thread. It replaced im2row + OpenBLAS (the DCGAN epoch on the CPU was
  0.88-0.97x PyTorch's, with ~60 % of its step in these two layers): see the "gather"
  section below for the measurements.

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
from .simd import BLOCK, ROWS, WIDTH, tile_fma, tile_gather_fma, tile_transpose
from .threads import num_threads, parallel_for

# Numba's cache keys a kernel by its own file's content, and the kernels here inline
# simd.tile_fma: this hash of simd.py (tests/test_kernels.py checks it) changes this file
# whenever simd.py changes, so that kernels compiled from an older simd.py are not loaded.
SIMD_SOURCE_SHA256 = "8dce5cffe6701e74"

# The weight gradients' fast-math flags: "contract" lets LLVM fuse a*b + c into one FMA (one
# rounding instead of two: at least as accurate), "reassoc" lets it vectorise their dot
# products. (tile_fma fuses its products itself.)
_FMA_SUM = {"contract", "reassoc"}

# _FROM_ZERO: the copy loops of the direct kernels (padding, widening, cropping) run over 1-D
# views from index 0 (``out[w] = row[w]``), not over computed indices (``dst[base + w]``):
# Numba cannot tell a computed index is >= 0, wraps negative ones element by element, and
# the loop does not vectorise (as in activation.py). Measured, 12 interleaved rounds, same
# bits (AMD EPYC, 2026-12-01, batch 128, ms): LeNet-5 conv1 forward 1.66 -> 1.07, its weight
# gradient 1.97 -> 1.37, a 3 -> 6 5x5 backward-data 2.51 -> 2.08, conv2 forward 1.24 -> 0.99.

# _NO_SLICE_COPIES: inside the kernels, arrays are copied element by element, never as
# ``dst[a:b] = src[c:d]``. Numba compiles an array-to-array slice assignment with its
# shape-mismatch error message, built from strings at run time, and that string machinery
# took ~2 s of the first compile of each kernel that used one (a one-line kernel: 2.28 s
# with a slice copy, 0.31 s with a loop; Numba 0.68, 2026-12-01). Scalar fills
# (``a[:] = 0``, 0.30 s) are fine; ``offs.max()`` (0.80 s) is not called in the kernels
# (the largest tap offset arrives in ``span``).

# Direct loops beat im2col + BLAS (and so the gather kernels, which beat it there too)
# at stride 1 unless C*OC is large and OH*OW small.
_DIRECT_MAX_C_OC = 4096
_DIRECT_MIN_PIXELS = 256
# Strided convolutions with at most this many taps per output (C*KH*KW) compute each
# sample's columns and their products in Numba, straight into NCHW; more taps went to BLAS.
# Measured at batch 64, 4x4 stride 2, 64 output channels, one process, 2 threads (AMD EPYC,
# 2026-12-01; im2row + BLAS -> columns, ms): 16 taps (the DCGAN's first conv, 28 -> 14):
# forward 1.66 -> 0.55, backward-data 1.45 -> 0.45, backward-weight and bias 0.86 -> 0.45;
# 32 taps: 2.18 -> 1.32, 1.50 -> 0.84, 1.05 -> 0.83; 64 taps: 2.37 -> 1.61, 1.98 -> 1.64,
# 1.72 -> 2.53 (slower); 1024 taps (its second conv): 2.4-2.8x slower.
_COLUMNS_MAX_TAPS = 32
# ... and so do those with fewer input channels than this, whatever their taps: the gather
# kernels pad the channels to 16, so 3 channels do 16/3 the work. Forward + both backwards,
# batch 64, stride 2, medians of 8 interleaved rounds (AMD EPYC, 2026-12-01, ms; im2row +
# BLAS / gather / columns): 3 -> 64 4x4 on 28x28 11.7 / 14.1 / 6.4; 3 -> 32 5x5 on 32x32
# 9.7 / 10.9 / 7.3; 8 -> 64 4x4 18.0 / 15.1 / 15.4.
_GATHER_MIN_CHANNELS = 8


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
    """"direct" for stride 1, unless many channels meet a small image (then the wide rows
    tip the other way; measured in benchmarks/kernels_cpu.py); else "columns" for few taps
    (C*KH*KW <= _COLUMNS_MAX_TAPS) or few channels (C < _GATHER_MIN_CHANNELS), else "gather"
    (implicit GEMM)."""
    if tuple(stride) == (1, 1) and (C * OC <= _DIRECT_MAX_C_OC or OH * OW >= _DIRECT_MIN_PIXELS):
        return "direct"
    if C * KH * KW <= _COLUMNS_MAX_TAPS or C < _GATHER_MIN_CHANNELS:
        return "columns"
    return "gather"


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
            row, out = src[c, h], dst[base : base + W]
            for w in range(W):  # an element loop on 1-D views (_NO_SLICE_COPIES) from 0
                out[w] = row[w]  # (_FROM_ZERO)


@njit(cache=True)
def _widen(src, Wp, dst):
    """dst (C, L) = rows of src (C, OH, OW) at pitch Wp, the gaps and the tail zero."""
    C, OH, OW = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(OH):
            row, out = src[c, h], dst[c, h * Wp : h * Wp + OW]
            for w in range(OW):
                out[w] = row[w]


@njit(nogil=True, cache=True)
def _direct_forward(lo, hi, x, wt, b, offs, T, ph, pw, Hp, Wp, L, y, xw, acc):
    """y (N, OC, OH, OW) = b[oc] + sum over taps t < T of wt[t, oc] * x_pad[n].flat[offs[t] + q].

    q runs over L wide output positions oh*Wp + ow (L a multiple of 16, the excess computed
    on zeros and dropped). wt (T, OC6) and b (OC6,) are zero-padded to a multiple of 6
    output channels: each ``tile_fma`` call makes 16 positions of 6 channels in registers.
    Work buffers: xw (max(offs) + L,), the padded planes, and acc (6, L).
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    OC6 = wt.shape[1]
    for n in range(lo, hi):
        _pad_planes(x[n], ph, pw, Hp, Wp, xw)
        for oc in range(0, OC6, ROWS):
            for q0 in range(0, L, WIDTH):
                tile_fma(xw, offs, T, q0, wt, oc, b, acc, L)
            for k in range(min(ROWS, OC - oc)):
                a = acc[k]
                for oh in range(OH):
                    out, row = y[n, oc + k, oh], a[oh * Wp : oh * Wp + OW]
                    for ow in range(OW):
                        out[ow] = row[ow]


@njit(nogil=True, cache=True)
def _direct_backward_data(lo, hi, dy, wt, zero, taps, F, p0, ph, pw, Wp, dx, dyf, acc):
    """dx (N, C, H, W): the adjoint of ``_direct_forward``, as a correlation of dy with the
    weight turned around: dx_pad[n, c].flat[p] = sum over taps (k, oc) of wt[k*OC + oc, c] *
    dy_wide[n, oc, p - offs[k]], for the padded-plane positions p from p0 (the first real
    pixel's row) on, 16 at a time by ``tile_fma`` (6 input channels per call).

    dyf (OC, P) holds each dy_wide plane at [F, F + L) (F = max(offs), zero elsewhere), so
    tap (k, oc) of position p0 + q reads dyf.flat[taps[k*OC + oc] + q] with taps[k*OC + oc]
    = oc*P + F + p0 - offs[k]; wt (K*OC, C6) is the weight as (tap, input channel), zero-
    padded to a multiple of 6 channels; zero (C6,) zeros, where the sums start. The taps go
    k by k, oc by oc, as the sums of the loops this replaced: the same bits. Work buffers:
    dyf, zero-filled, and acc (6, Q), Q the positions computed (a multiple of 16).
    """
    OC, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    C6 = wt.shape[1]
    T = taps.size
    Q = acc.shape[1]
    for n in range(lo, hi):
        for oc in range(OC):
            for oh in range(OH):
                row, out = dy[n, oc, oh], dyf[oc, F + oh * Wp : F + oh * Wp + OW]
                for ow in range(OW):
                    out[ow] = row[ow]
        for c in range(0, C6, ROWS):
            for q0 in range(0, Q, WIDTH):
                tile_fma(dyf, taps, T, q0, wt, c, zero, acc, Q)
            for k in range(min(ROWS, C - c)):
                a = acc[k]
                for h in range(H):
                    base = (h + ph) * Wp + pw - p0
                    out, row = dx[n, c + k, h], a[base : base + W]
                    for w in range(W):
                        out[w] = row[w]


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
# per-round minimums of 15 interleaved rounds; before tile_fma). The weight gradient
# repeats the direct loops' two-by-four passes inline on purpose: the same passes as shared
# njit helpers (one call per pass) gave the same bits but ran slower, forward + backward, 12
# interleaved rounds: LeNet-5 conv2 5.8 -> 8.4 ms, conv1 8.5 -> 9.1, the DCGAN's first conv
# 2.7 -> 3.2.


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


@njit(nogil=True, cache=True)
def _columns_forward(lo, hi, x, wt, b, rows, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, L, y, cols,
                     acc):
    """y (N, OC, OH*OW) = b + wt.T @ the columns of x[n] (``_columns``), sample by sample.

    wt (T, OC6) and b (OC6,) are zero-padded to a multiple of 6 output channels; a sample's
    columns (T, L) are zero from position OH*OW to L (a multiple of 16), and rows[t] = t*L
    is where column t starts, so ``tile_fma`` makes 16 positions of 6 channels per call.
    Work buffers: cols (T, L), zero, and acc (6, L)."""
    OC = y.shape[1]
    T, OC6 = wt.shape
    S = OH * OW
    for n in range(lo, hi):
        _columns(x[n], KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, cols)
        for oc in range(0, OC6, ROWS):
            for q0 in range(0, L, WIDTH):
                tile_fma(cols, rows, T, q0, wt, oc, b, acc, L)
            for k in range(min(ROWS, OC - oc)):
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


@njit(nogil=True, cache=True)
def _columns_backward_data(lo, hi, dy, wt, zero, rows, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, L,
                           dx, dyw, acc):
    """dx (N, C, H, W): the adjoint of ``_columns_forward``. Per sample, the columns'
    gradient, six taps at a time, = wt.T (T6, OC) @ dy[n] (OC, L) by ``tile_fma`` (wt: the
    weight as (OC, T), zero-padded to T6 a multiple of 6 taps; zero (T6,) zeros; rows[oc] =
    oc*L; dy's positions from OH*OW zero), then each tap's gradient is added back where
    ``_columns`` read it. Work buffers: dyw (OC, L), zero-filled, and acc (6, L)."""
    OC = dy.shape[1]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    T6 = wt.shape[1]
    T = C * KH * KW
    S = OH * OW
    for n in range(lo, hi):
        for oc in range(OC):
            src, dst = dy[n, oc], dyw[oc]
            for q in range(S):
                dst[q] = src[q]
        dn = dx[n]
        dn[:] = 0
        for t in range(0, T6, ROWS):
            for q0 in range(0, L, WIDTH):
                tile_fma(dyw, rows, OC, q0, wt, t, zero, acc, L)
            for k in range(min(ROWS, T - t)):
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
    T = C * KH * KW
    wt = _zero_pad(w.reshape(OC, T).T, (1, ROWS))  # (T, OC6)
    b6 = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (ROWS,))
    y = np.empty((N, OC, OH * OW), dtype=x.dtype)
    L = _columns_length(OH, OW)
    parallel_for(_columns_forward, N, x, wt, b6, np.arange(T) * L,
                 *_columns_geometry(KH, KW, stride, padding, dilation, OH, OW), L, y,
                 scratch=[((T, L), x.dtype), ((ROWS, L), x.dtype)])
    return y.reshape(N, OC, OH, OW)


def _columns_conv_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW):
    N, OC = dy.shape[:2]
    _, C, KH, KW = w.shape
    wt = _zero_pad(w.reshape(OC, C * KH * KW), (1, ROWS))  # (OC, T6)
    dx = np.empty(x_shape, dtype=dy.dtype)
    L = _columns_length(OH, OW)
    parallel_for(_columns_backward_data, N, dy.reshape(N, OC, OH * OW), wt,
                 np.zeros(wt.shape[1], dy.dtype), np.arange(OC) * L,
                 *_columns_geometry(KH, KW, stride, padding, dilation, OH, OW), L, dx,
                 scratch=[((OC, L), dy.dtype), ((ROWS, L), dy.dtype)])
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


# ----------------------------------------------------------------------------- gather
# Implicit GEMM: the products of im2row + BLAS, with the windows read in place instead of
# copied into a row matrix. The input is copied once to channels-last, zero-padded, with its
# channels padded to whole 16-float vectors: xp (N, Hp, Wp, Cp). The window of output
# position (n, oh, ow) then starts at ((n*Hp + oh*SH)*Wp + ow*SW)*Cp, and its tap (i, j, c)
# is ``taps[t] = (i*DH*Wp + j*DW)*Cp + c`` further on. ``tile_gather_fma`` sums 6 x 16
# products per call with its operands read through such offsets:
#
# * forward: 6 output positions x 16 output channels, over the taps (a = xp, b = the weight
#   packed as (OCp/16, K, 16) panels), y stored straight into NCHW (16 channels L apart);
# * backward-data: 6 positions x 16 entries of their windows (one tap group: (i, j) and 16
#   channels), over the output channels (a = dy moved to channels-last, b = the weight
#   packed as (G, OC, 16)), added into dxp: the columns' scatter-add (row2im) happens in
#   the registers' store;
# * backward-weight: 6 taps x 16 output channels, over the output positions of the whole
#   batch (a = xp, b = dy moved to panels of 16 channels); each thread takes its own taps,
#   so dw has the same bits on any number of threads (split by samples instead, with a
#   partial dw per thread summed after, it ran 6 % slower: 9.32 against 8.76 ms, batch 64,
#   12 interleaved rounds).
#
# Offsets that are a fixed stride (the output channels in backward-data, the packed rows)
# are passed as that stride, not as an array: one integer load per tap less (backward-data
# 21 -> 30 GMAC/s on one thread, the forward 25 -> 30, two runs minutes apart). The
# backward-weight kernel takes each block of positions' windows for all 16-channel panels
# before the next 6 taps (29.6-31.9 GMAC/s for blocks of 32-256 positions). Measured on
# the DCGAN discriminator's 64 -> 128 4x4/2 convolution (AMD EPYC, 2026-12-01): one thread,
# batch 64, each kernel 29-31 GMAC/s, where OpenBLAS's sgemm on a product of the same shape
# made 32-39; but with im2row's copies and their memory traffic gone (they did not scale to
# the second core), the whole forward took 8.7 against 10.3 ms on two threads in the same
# rounds, and the DCGAN step ran 1.11x as fast at batch 128. The whole comparison:
# benchmarks/results/2026-12-01-amd-cpu-issue12-pass6.md.
#
# Which cache lines a kernel streams per tap sets its speed (batch 128, two threads, the
# kernels alone, lower quartiles of 12-20 rounds; AMD EPYC, 2026-12-01, in
# benchmarks/results/2026-12-01-amd-cpu-issue12-pass7.md): the forward's 6 positions read
# their channels as runs, a new line every 16 taps, beside the packed weight's line per
# tap: 62-64 GMAC/s. Backward-data read dy channels-first, a new line of 6 positions per
# output channel, beside the weight's: 48-51; with each block's dy moved to channels-last
# first, inside the kernel, it is the forward's pattern again: 58.6 (the same bits). The
# weight gradient streams a window per position and a line of dy's panels: 51-53. Turned
# around (6 output channels of dy by 16 channels of a window) it ran 41-47 for blocks of
# 128-256 positions; with the panels outside the taps, 48-49: neither kept. The layout
# copies move 8 x 8 blocks through registers (``simd.tile_transpose``); the padded copy of
# the forward's input is made per sample inside its kernel, just before its tiles read it.


def _lanes(C):
    """C rounded up to whole 16-float tiles: the channel count of the channels-last copies."""
    return -(-C // WIDTH) * WIDTH


@njit(nogil=True, cache=True)
def _pad_nhwc(lo, hi, x, PH, PW, xp):
    """xp (N, Hp, Wp, Cp) = x (N, C, H, W) moved to channels-last, zero-padded by (PH, PW),
    and with zero channels C .. Cp."""
    N, C, H, W = x.shape
    Hp, Wp, Cp = xp.shape[1], xp.shape[2], xp.shape[3]
    for n in range(lo, hi):
        xn, pn = x[n], xp[n]
        for h in range(Hp):
            if h < PH or h >= PH + H:
                pn[h] = 0
                continue
            for w in range(Wp):
                px = pn[h, w]
                if w < PW or w >= PW + W:
                    px[:] = 0
                    continue
                for c in range(C):
                    px[c] = xn[c, h - PH, w - PW]
                for c in range(C, Cp):
                    px[c] = 0
    return xp


@njit(nogil=True, cache=True)
def _transpose(src, s0, sstride, R, C, dst, d0, dstride):
    """dst[d0 + c*dstride + r] = src[s0 + r*sstride + c] for r < R, c < C (flat arrays): 8 x 8
    blocks by ``simd.tile_transpose``, the last block of each dimension moved back to end at
    its edge (a copy may write an element twice); scalar when R or C is under 8."""
    if R < BLOCK or C < BLOCK:
        for r in range(R):
            for c in range(C):
                dst[d0 + c * dstride + r] = src[s0 + r * sstride + c]
        return
    for r0 in range(0, R, BLOCK):
        r = min(r0, R - BLOCK)
        for c0 in range(0, C, BLOCK):
            c = min(c0, C - BLOCK)
            tile_transpose(src, s0 + r * sstride + c, sstride, dst, d0 + c * dstride + r, dstride)


@njit(nogil=True, cache=True)
def _crop_nchw(lo, hi, xp, PH, PW, x):
    """x (N, C, H, W) = the interior of xp (N, Hp, Wp, Cp), its first C channels, back in
    channels-first order: per row, a (W, C) -> (C, W) ``_transpose`` (the DCGAN's (128, 64,
    14, 14) on two threads: 1.1 ms, against 1.5 with scalar loops; AMD EPYC, 2026-12-01)."""
    N, C, H, W = x.shape
    Hp, Wp, Cp = xp.shape[1], xp.shape[2], xp.shape[3]
    pf, xf = xp.reshape(-1), x.reshape(-1)
    for n in range(lo, hi):
        for h in range(H):
            _transpose(pf, ((n * Hp + PH + h) * Wp + PW) * Cp, Cp, W, C, xf, (n * C * H + h) * W,
                       H * W)
    return x


@njit(cache=True)
def _window(q, L, OW, SH, SW, Hp, Wp, Cp):
    """Where the window of output position q (= n*L + oh*OW + ow) starts in xp, flat."""
    n, pos = q // L, q % L
    return ((n * Hp + pos // OW * SH) * Wp + pos % OW * SW) * Cp


@njit(nogil=True, cache=True)
def _gather_forward(lo, hi, x, PH, PW, xp, taps, wp, b, SH, SW, OW, y, arow, orow):
    """y (N, OCp, L) = b[oc] + sum over taps t of wp[oc // 16, t, oc % 16] * xp.flat[window
    of (n, l) + taps[t]], for the samples lo .. hi: 6 positions by 16 channels per
    ``tile_gather_fma`` (b = the packed weight, its rows 16 apart). xp (N, Hp, Wp, Cp) is
    filled from x as it goes, each sample just before its first tile, so that the tiles
    read it from the second-level cache (the DCGAN's 64 -> 128 convolution at batch 128, two
    threads: 13.8 against 14.3 ms padded first, lower quartiles of 10 calls each with a 64
    MB sweep between calls; AMD EPYC, 2026-12-01). Work: arow, orow (6,)."""
    Hp, Wp, Cp = xp.shape[1], xp.shape[2], xp.shape[3]
    OCp, L = y.shape[1], y.shape[2]
    J, K = wp.shape[0], wp.shape[1]
    for n in range(lo, hi):
        for oc in range(OCp):
            y[n, oc] = b[oc]
    xf, wf, yf = xp.reshape(-1), wp.reshape(-1), y.reshape(-1)
    last = hi * L - 1
    padded = lo  # samples lo .. padded - 1 are in xp
    for p in range(lo * L, hi * L, ROWS):
        while padded <= min(p + ROWS - 1, last) // L:
            _pad_nhwc(padded, padded + 1, x, PH, PW, xp)
            padded += 1
        for k in range(ROWS):  # a last, partial tile repeats its last position
            q = min(p + k, last)
            arow[k] = _window(q, L, OW, SH, SW, Hp, Wp, Cp)
            orow[k] = q // L * OCp * L + q % L
        for j in range(J):
            tile_gather_fma(xf, arow, taps, wf, WIDTH, j * K * WIDTH, K, yf, orow, L)
            for k in range(ROWS):
                orow[k] += WIDTH * L


@njit(nogil=True, cache=True)
def _gather_backward_data(lo, hi, dy, wq, groups_at, SH, SW, OW, PH, PW, dx, dxp, dyt, arow,
                          base, orow):
    """dx (N, C, H, W) for the samples lo .. hi, ``per`` = len(dxp) of them at a time: their
    padded channels-last gradient dxp (per, Hp, Wp, Cp) = the sum, over output positions
    (n, l) and output channels oc, of dy[n, oc, l] times the weight laid over the window of
    (n, l): for each tap group g (kernel tap (i, j), channels c0 .. c0 + 16, groups_at[g]
    from a window's start), 6 positions by 16 channels per ``tile_gather_fma`` (a = dyt
    (per*L, OC), the block's dy moved to channels-last first: each position's channels one
    run, so a tile's 6 runs are each read from one cache line for 16 channels; b = wq (G,
    OC, 16), rows 16 apart), added into dxp in place; then cropped into dx while it is in
    cache. Whole samples at a time, so that each pixel's sum runs in the same order on any
    number of threads, and each group's weights are read from the first-level cache for all
    of their positions. Work: dxp, dyt, arow, base (per*L rounded up to 6,), orow (6,)."""
    N, OC, L = dy.shape
    per, Hp, Wp, Cp = dxp.shape
    G = wq.shape[0]
    yf, tf, wf, df = dy.reshape(-1), dyt.reshape(-1), wq.reshape(-1), dxp.reshape(-1)
    for n0 in range(lo, hi, per):
        count = min(hi, n0 + per) - n0
        size = count * L
        for n in range(count):  # (OC, L) -> (L, OC) per sample
            _transpose(yf, (n0 + n) * OC * L, L, OC, L, tf, n * L * OC, OC)
        dxp[:] = 0
        for k in range(-(-size // ROWS) * ROWS):  # a last, partial tile repeats its last position
            q = min(k, size - 1)
            arow[k] = q * OC
            base[k] = _window(q, L, OW, SH, SW, Hp, Wp, Cp)
        for g in range(G):
            for t in range(0, size, ROWS):
                for k in range(ROWS):
                    orow[k] = base[t + k] + groups_at[g]
                tile_gather_fma(tf, arow[t:t + ROWS], 1, wf, WIDTH, g * OC * WIDTH, OC, df,
                                orow, 1)
        _crop_nchw(0, count, dxp, PH, PW, dx[n0:n0 + count])


@njit(nogil=True, cache=True)
def _dy_panels(lo, hi, dy, out):
    """out (J, N*L, 16) = dy (N, OC, L) as panels of 16 output channels, channels-last within
    each: out[j, n*L + l, q] = dy[n, 16 j + q, l], zero for channels past OC. Each sample's
    panel is a (16, L) -> (L, 16) ``_transpose`` (the DCGAN's (128, 128, 49): 0.25 ms on two
    threads, against 0.61 element by element)."""
    N, OC, L = dy.shape
    J, NL = out.shape[0], out.shape[1]
    yf, of = dy.reshape(-1), out.reshape(-1)
    for n in range(lo, hi):
        for j in range(J):
            rows = min(WIDTH, OC - j * WIDTH)
            for i in range((j * NL + n * L) * WIDTH, (j * NL + n * L + L) * WIDTH, WIDTH):
                for q in range(rows, WIDTH):  # channels past OC
                    of[i + q] = 0
            _transpose(yf, (n * OC + j * WIDTH) * L, L, rows, L, of, (j * NL + n * L) * WIDTH, WIDTH)


@njit(nogil=True, cache=True)
def _gather_backward_weight(lo, hi, dyp, xp, taps, SH, SW, OW, block, dw, bpos, arow, orow):
    """dw (K, OCp), rows 6*lo .. 6*hi (taps (i, j, c)): dw[t, oc] = sum over output positions
    q = (n, l) of xp.flat[bpos[q] + taps[t]] * dy[n, oc, l], bpos[q] the window of q: 6 taps
    by 16 output channels per ``tile_gather_fma``, over ``block`` positions at a time (a =
    xp, arow = the 6 taps, offsets bpos; b = dyp (J, N*L, 16), each panel's block read from
    the first-level cache by every 6 taps). Each thread sums its own taps over the whole
    batch, in the same order on any number of threads. Work: bpos (N*L,), arow, orow (6,)."""
    N, Hp, Wp, Cp = xp.shape
    J, NL = dyp.shape[0], dyp.shape[1]
    L = NL // N
    K, OCp = dw.shape
    for q in range(NL):
        bpos[q] = _window(q, L, OW, SH, SW, Hp, Wp, Cp)
    xf, df, wf = xp.reshape(-1), dyp.reshape(-1), dw.reshape(-1)
    for s in range(0, NL, block):
        T = min(block, NL - s)
        at = bpos[s:s + T]
        for t0 in range(lo * ROWS, min(hi * ROWS, K), ROWS):
            for k in range(ROWS):  # a last, partial tile repeats its last tap
                t = min(t0 + k, K - 1)
                arow[k] = taps[t]
                orow[k] = t * OCp
            for j in range(J):
                tile_gather_fma(xf, arow, at, df, WIDTH, (j * NL + s) * WIDTH, T, wf, orow, 1)
                for k in range(ROWS):
                    orow[k] += WIDTH


def _gather_shape(x_shape, padding):
    """(N, Hp, Wp, Cp): the shape of xp, the padded channels-last copy of x (N, C, H, W)."""
    N, C, H, W = x_shape
    return N, H + 2 * padding[0], W + 2 * padding[1], _lanes(C)


def _gather_empty(x, padding):
    """An uninitialised xp for x (N, C, H, W)."""
    return np.empty(_gather_shape(x.shape, padding), dtype=x.dtype)


def _gather_input(x, padding):
    """x (N, C, H, W) as xp (N, Hp, Wp, Cp): channels-last, padded, channels to whole tiles."""
    xp = _gather_empty(x, padding)
    parallel_for(_pad_nhwc, x.shape[0], x, padding[0], padding[1], xp)
    return xp


@functools.lru_cache(maxsize=256)
def _gather_taps(KH, KW, C, dilation, Wp, Cp):
    """taps[(i*KW + j)*C + c] = (i*DH*Wp + j*DW)*Cp + c: tap t's place in a window of xp.
    Cached per geometry and shared, as ``_tap_offsets``: never written to."""
    i, j, c = np.meshgrid(np.arange(KH), np.arange(KW), np.arange(C), indexing="ij")
    return ((i * dilation[0] * Wp + j * dilation[1]) * Cp + c).reshape(-1).astype(np.int64)


def _gather_conv_forward(x, w, b, stride, padding, dilation, OH, OW):
    """(y, xp): y by the gather kernels, and the padded channels-last input they read, for
    the weight gradient of the same x to reuse."""
    N, C = x.shape[:2]
    OC, _, KH, KW = w.shape
    xp = _gather_empty(x, padding)  # filled by the kernel
    Wp, Cp = xp.shape[2], xp.shape[3]
    OCp, K = _lanes(OC), KH * KW * C
    # (OCp/16, K, 16), taps in (i, j, c) order: one strided copy (0.23 ms for the DCGAN's
    # (128, 64, 4, 4), against 0.58 for a transpose, then the panels)
    wp = np.ascontiguousarray(_zero_pad(w, (WIDTH, 1, 1, 1)).reshape(OCp // WIDTH, WIDTH, C, KH, KW)
                              .transpose(0, 3, 4, 2, 1)).reshape(OCp // WIDTH, K, WIDTH)
    bp = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (WIDTH,))
    y = np.empty((N, OCp, OH * OW), dtype=x.dtype)
    parallel_for(_gather_forward, N, x, *padding, xp,
                 _gather_taps(KH, KW, C, tuple(dilation), Wp, Cp), wp, bp, stride[0], stride[1], OW, y,
                 scratch=[((ROWS,), np.int64)] * 2)
    if OCp != OC:
        y = np.ascontiguousarray(y[:, :OC])
    return y.reshape(N, OC, OH, OW), xp


def _gather_conv_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW):
    """dx by the gather kernel, the weight packed as (tap groups, OC, 16)."""
    N, C = x_shape[:2]
    OC, _, KH, KW = w.shape
    _, Hp, Wp, Cp = _gather_shape(x_shape, padding)
    G = KH * KW * Cp // WIDTH
    wq = np.ascontiguousarray(  # (G, OC, 16): groups (i, j, c // 16), channels to whole tiles
        _zero_pad(w, (1, WIDTH, 1, 1)).reshape(OC, Cp // WIDTH, WIDTH, KH, KW)
        .transpose(3, 4, 1, 0, 2)).reshape(G, OC, WIDTH)
    L = OH * OW
    per = max(1, _DATA_BLOCK // L)  # samples per block
    rows = -(-per * L // ROWS) * ROWS
    dx = np.empty(x_shape, dtype=dy.dtype)
    # each group's place in a window: the taps of Cp channels, every 16th
    groups_at = np.ascontiguousarray(_gather_taps(KH, KW, Cp, tuple(dilation), Wp, Cp)[::WIDTH])
    parallel_for(_gather_backward_data, N, dy.reshape(N, OC, L), wq, groups_at, *stride,
                 OW, *padding, dx,
                 scratch=[((per, Hp, Wp, Cp), dy.dtype), ((per * L, OC), dy.dtype)]
                 + [((rows,), np.int64)] * 2 + [((ROWS,), np.int64)])
    return dx


# Output positions per block of the backward-data kernel (whole samples, at least one).
_DATA_BLOCK = 48
# Output positions per pass of the weight gradient's kernel: a panel's block of dy (block x
# 16 floats) stays in the first-level cache over every 6 taps (blocks of 32-256 positions ran
# alike, 29.6-31.9 GMAC/s on one thread).
_GATHER_BLOCK = 64


def _gather_conv_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW, kept):
    """dw from xp: ``kept`` when it is this x's (from the forward), else made again."""
    N = x.shape[0]
    OC, C, KH, KW = w_shape
    shape = _gather_shape(x.shape, padding)
    Wp, Cp = shape[2], shape[3]
    if isinstance(kept, np.ndarray) and kept.shape == shape and kept.dtype == x.dtype:
        xp = kept
    else:
        xp = _gather_input(x, padding)
    L, OCp, K = OH * OW, _lanes(OC), KH * KW * C
    dyp = np.empty((OCp // WIDTH, N * L, WIDTH), dtype=x.dtype)
    parallel_for(_dy_panels, N, dy.reshape(N, OC, L), dyp)
    dw = np.zeros((K, OCp), dtype=x.dtype)
    parallel_for(_gather_backward_weight, -(-K // ROWS), dyp, xp,
                 _gather_taps(KH, KW, C, tuple(dilation), Wp, Cp), *stride, OW, _GATHER_BLOCK, dw,
                 scratch=[((N * L,), np.int64)] + [((ROWS,), np.int64)] * 2)
    dw = dw[:, :OC].reshape(KH, KW, C, OC)
    return np.ascontiguousarray(dw.transpose(3, 2, 0, 1))


# ----------------------------------------------------------------------------- the seam


def conv2d(x, w, b, stride, padding, dilation):
    """y (N, OC, OH, OW) = w (OC, C, KH, KW) cross-correlated with x (N, C, H, W), plus b (OC,)."""
    return conv2d_forward(x, w, b, stride, padding, dilation)[0]


def conv2d_forward(x, w, b, stride, padding, dilation):
    """(y, kept): ``conv2d``, and on the gather path x's padded channels-last copy (N, Hp,
    Wp, Cp), for ``conv2d_backward_weight`` of the same x to reuse instead of making it
    again (else None). It costs that copy's memory until backward (the DCGAN
    discriminator's second convolution, batch 64: 4.2 MB)."""
    x, w, b = _check("conv2d", x, w, b)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    method = _method(C, OC, KH, KW, OH, OW, stride)
    if method == "columns":
        return _columns_conv_forward(x, w, b, stride, padding, dilation, OH, OW), None
    if method == "gather":
        return _gather_conv_forward(x, w, b, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    T = C * KH * KW
    wt = _zero_pad(w.reshape(OC, T).T, (1, ROWS))  # (T, OC6)
    b6 = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (ROWS,))
    offs = _tap_offsets(C, KH, KW, Hp, Wp, tuple(dilation), 4)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    L = _wide_length(OH, OW, Wp)
    span = int(offs.max()) + L
    parallel_for(_direct_forward, N, x, wt, b6, offs, T, *padding, Hp, Wp, L, y,
                 scratch=[((span,), x.dtype), ((ROWS, L), x.dtype)])
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
    if method == "gather":
        return _gather_conv_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    K = KH * KW
    wt = _zero_pad(w.reshape(OC, C, K).transpose(2, 0, 1).reshape(K * OC, C), (1, ROWS))
    offs = _tap_offsets(1, KH, KW, Hp, Wp, tuple(dilation))  # (K,)
    p0 = padding[0] * Wp  # dx positions p0 .. p0 + Q: the rows of real pixels
    Q = -(-((H - 1) * Wp + padding[1] + W) // WIDTH) * WIDTH
    F = int(offs.max())
    P = max(F + p0 + Q, F + OH * Wp)
    taps = (np.arange(OC) * P + F + p0 - offs[:, None]).reshape(-1)  # (K*OC,), k major
    dx = np.empty(x_shape, dtype=dy.dtype)
    parallel_for(_direct_backward_data, N, dy, wt, np.zeros(wt.shape[1], dy.dtype), taps, F, p0,
                 *padding, Wp, dx,
                 scratch=[((OC, P), dy.dtype), ((ROWS, Q), dy.dtype)])
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
    if method == "gather":
        return _gather_conv_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW,
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
    """(dx, dw, db) as ``Backend.conv2d_backward``; ``kept`` as for ``conv2d_backward_weight``;
    on the columns path the bias gradient comes from the weight gradient's pass over dy."""
    x, w, dy = _check("conv2d_backward", x, w, dy)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    if _method(C, OC, KH, KW, OH, OW, stride) == "columns":
        geometry = (stride, padding, dilation, OH, OW)
        dx = _columns_conv_backward_data(dy, w, x.shape, *geometry) if need_dx else None
        dw, db = _columns_conv_backward_weight(x, dy, w.shape, *geometry)
        return dx, dw, (db if need_db else None)
    dx = conv2d_backward_data(dy, w, x.shape, stride, padding, dilation) if need_dx else None
    dw = conv2d_backward_weight(x, dy, w.shape, stride, padding, dilation, kept)
    return dx, dw, (dy.sum(axis=(0, 2, 3)) if need_db else None)
