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
from .simd import ROWS, WIDTH, tile_fma
from .threads import num_threads, parallel_for, parallel_matmul

# Numba's cache keys a kernel by its own file's content, and the kernels here inline
# simd.tile_fma: this hash of simd.py (tests/test_kernels.py checks it) changes this file
# whenever simd.py changes, so that kernels compiled from an older simd.py are not loaded.
SIMD_SOURCE_SHA256 = "26bb9da32c26d368"

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
# im2row's runs of C channels showed no change (20.3 ms either way at batch 128): left as is.

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
    if method == "gemm":
        return _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW, _dy_t(dy))
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
