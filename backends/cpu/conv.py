"""Convolution on NumPy arrays with Numba kernels: forward and both backwards.

Two methods, picked per call by ``_use_direct``:

* direct, for stride 1 (LeNet, and all but many channels on small images): every (C, H, W)
  sample is zero-padded to (Hp, Wp) planes and flattened, and outputs are computed "wide",
  at row pitch Wp. Then the input under kernel tap (c, i, j) is one contiguous run,
  ``x_pad.flat[c*Hp*Wp + i*DH*Wp + j*DW :][:L]`` with L >= (OH-1)*Wp + OW, so every tap is a
  long vectorisable axpy; the Wp - OW columns between output rows are computed and
  dropped. Each pass takes two output channels and four taps, with zero channels and taps
  padding the counts. Parallel over the batch.
* im2col + BLAS, for strided convolutions and for many channels on small images (DCGAN):
  Numba gathers cols (C*KH*KW, N*OH*OW) and large matmuls do the arithmetic.

Measurements and the reasons for these choices: benchmarks/kernels_cpu.py. Accumulation
order differs from the reference backend, so results agree to rounding.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..base import conv2d_output_size
from .threads import parallel_matmul

# "contract" lets LLVM fuse a*b + c into one FMA (one rounding instead of two: at least
# as accurate); "reassoc" lets it vectorise the dot products of the weight gradient.
_FMA = {"contract"}
_FMA_SUM = {"contract", "reassoc"}

# Direct loops beat im2col + BLAS at stride 1 unless C*OC is large and OH*OW small.
_DIRECT_MAX_C_OC = 4096
_DIRECT_MIN_PIXELS = 256
# im2col is done in batch chunks so that cols stays under this many bytes.
_COLS_BYTES = 64 << 20


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


def _use_direct(C, OC, OH, OW, stride):
    """Direct loops for stride 1, unless many channels meet a small image (then the wide rows
    and the im2col overhead tip the other way; measured in benchmarks/kernels_cpu.py)."""
    return tuple(stride) == (1, 1) and (C * OC <= _DIRECT_MAX_C_OC or OH * OW >= _DIRECT_MIN_PIXELS)


def _tap_offsets(C, KH, KW, Hp, Wp, dilation):
    """Flat offset of tap (c, i, j) in the padded, flattened planes: c*Hp*Wp + i*DH*Wp + j*DW."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    offs = c * Hp * Wp + i * dilation[0] * Wp + j * dilation[1]
    return np.ascontiguousarray(offs.reshape(-1), dtype=np.int64)


def _wide_length(OH, OW, Wp):
    """Wide output positions per plane, (OH-1)*Wp + OW, rounded up to a whole number of
    16-float vectors so the inner loops need no scalar remainder."""
    return -(-((OH - 1) * Wp + OW) // 16) * 16


def _zero_pad(a, multiples):
    """``a`` (contiguous) with zeros appended so that axis k has a multiple of multiples[k]."""
    pad = [(0, -n % m) for n, m in zip(a.shape, multiples)]
    if not any(after for _, after in pad):
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(np.pad(a, pad))


# ----------------------------------------------------------------------------- direct


@njit(cache=True)
def _pad_planes(src, ph, pw, Hp, Wp, dst):
    """dst (>= C*Hp*Wp,) flat = src (C, H, W) zero-padded by (ph, pw), then zeros."""
    C, H, W = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(H):
            base = (c * Hp + h + ph) * Wp + pw
            dst[base : base + W] = src[c, h]


@njit(cache=True)
def _widen(src, Wp, dst):
    """dst (C, L) = rows of src (C, OH, OW) at pitch Wp, the gaps and the tail zero."""
    C, OH, OW = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(OH):
            dst[c, h * Wp : h * Wp + OW] = src[c, h]


@njit(parallel=True, cache=True, fastmath=_FMA)
def _direct_forward(x, wt, b, offs, ph, pw, Hp, Wp, L, y):
    """y (N, OC, OH, OW) = b[oc] + sum over taps t of wt[oc, t] * x_pad[n].flat[offs[t] + q].

    q runs over L wide output positions oh*Wp + ow (L a multiple of the vector width, the
    excess computed on zeros and dropped). Zeros pad wt (OC2, T4) and b (OC2,) to an even
    number of rows and T4 = C*KH*KW rounded up to a multiple of 4 (offsets 0), so every
    pass is two output channels by four taps.
    """
    N = x.shape[0]
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    OC2, T = wt.shape
    for n in prange(N):
        xw = np.empty(offs.max() + L, dtype=x.dtype)
        _pad_planes(x[n], ph, pw, Hp, Wp, xw)
        acc = np.empty((2, L), dtype=y.dtype)
        a0 = acc[0]
        a1 = acc[1]
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
                for oh in range(OH):
                    y[n, oc + k, oh, :] = acc[k, oh * Wp : oh * Wp + OW]


@njit(parallel=True, cache=True, fastmath=_FMA)
def _direct_backward_data(dy, wt, offs, ph, pw, Hp, Wp, L, dx):
    """dx (N, C, H, W): dy[n, oc] (wide) times wt[c, k, oc] added at offset offs[k] of plane c.

    The adjoint of ``_direct_forward``, two input channels by four output channels per pass:
    wt (C2, KH*KW, OC4) is the weight transposed and zero-padded to an even C2 and OC4 a
    multiple of 4 (zero rows of dy_wide match the padding); offs (KH*KW,) = i*DH*Wp + j*DW.
    """
    N, OC = dy.shape[0], dy.shape[1]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    C2, K, OC4 = wt.shape
    for n in prange(N):
        dyw = np.zeros((OC4, L), dtype=dy.dtype)
        _widen(dy[n], Wp, dyw[:OC])
        acc = np.empty((2, offs.max() + L), dtype=dx.dtype)
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
                for h in range(H):
                    base = (h + ph) * Wp + pw
                    dx[n, c + k, h, :] = acc[k, base : base + W]


@njit(parallel=True, cache=True, fastmath=_FMA_SUM)
def _direct_backward_weight(x, dy, offs, ph, pw, Hp, Wp, L, parts):
    """parts[p] (OC2, T4) += dw summed over the p-th slice of the batch (padded as in forward).

    dw[oc, t] = sum over n and wide positions q of dy_wide[n, oc, q] * x_pad[n].flat[offs[t] + q]
    (the gaps of dy_wide are zero). One slice per thread, so no two threads write one sum.
    """
    N, OC = x.shape[0], dy.shape[1]
    P, OC2, T = parts.shape
    for p in prange(P):
        xw = np.empty(offs.max() + L, dtype=x.dtype)
        dyw = np.zeros((OC2, L), dtype=dy.dtype)
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


# ----------------------------------------------------------------------------- im2col


@njit(parallel=True, cache=True)
def _im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, cols):
    """cols (C*KH*KW, N, OH*OW): row (c, i, j) holds x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]
    (zero where that falls in the padding)."""
    N, C, H, W = x.shape
    for n in prange(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    row = cols[(c * KH + i) * KW + j, n]
                    for oh in range(OH):
                        h = oh * SH + i * DH - PH
                        for ow in range(OW):
                            w = ow * SW + j * DW - PW
                            inside = 0 <= h < H and 0 <= w < W
                            row[oh * OW + ow] = x[n, c, h, w] if inside else 0
    return cols


@njit(parallel=True, cache=True)
def _col2im(cols, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, dx):
    """dx (N, C, H, W) = the sum of every cols entry at the input position it came from."""
    N, C, H, W = dx.shape
    for n in prange(N):
        dx[n] = 0
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    row = cols[(c * KH + i) * KW + j, n]
                    for oh in range(OH):
                        h = oh * SH + i * DH - PH
                        if 0 <= h < H:
                            for ow in range(OW):
                                w = ow * SW + j * DW - PW
                                if 0 <= w < W:
                                    dx[n, c, h, w] += row[oh * OW + ow]
    return dx


def _batches(N, per_sample_bytes):
    step = max(1, _COLS_BYTES // max(1, per_sample_bytes))
    return [(n, min(N, n + step)) for n in range(0, N, step)]


def _geometry(KH, KW, stride, padding, dilation, OH, OW):
    return (KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], OH, OW)


def _gemm_forward(x, w, b, stride, padding, dilation, OH, OW):
    N, C = x.shape[:2]
    OC, _, KH, KW = w.shape
    T, L = C * KH * KW, OH * OW
    geo = _geometry(KH, KW, stride, padding, dilation, OH, OW)
    w2 = w.reshape(OC, T)
    y = np.empty((N, OC, L), dtype=x.dtype)
    for n0, n1 in _batches(N, T * L * x.itemsize):
        cols = _im2col(x[n0:n1], *geo, np.empty((T, n1 - n0, L), dtype=x.dtype))
        y_t = parallel_matmul(w2, cols.reshape(T, -1))  # (OC, n*L)
        y[n0:n1] = y_t.reshape(OC, n1 - n0, L).transpose(1, 0, 2)
    if b is not None:
        y += b.reshape(1, OC, 1)
    return y.reshape(N, OC, OH, OW)


def _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW):
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    T, L = C * KH * KW, OH * OW
    geo = _geometry(KH, KW, stride, padding, dilation, OH, OW)
    w_t = w.reshape(OC, T).T
    dx = np.empty(x_shape, dtype=dy.dtype)
    for n0, n1 in _batches(N, T * L * dy.itemsize):
        dy_t = np.ascontiguousarray(dy[n0:n1].reshape(n1 - n0, OC, L).transpose(1, 0, 2))
        cols = parallel_matmul(w_t, dy_t.reshape(OC, -1)).reshape(T, n1 - n0, L)
        _col2im(cols, *geo, dx[n0:n1])
    return dx


def _gemm_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW):
    N, C = x.shape[:2]
    OC, _, KH, KW = w_shape
    T, L = C * KH * KW, OH * OW
    geo = _geometry(KH, KW, stride, padding, dilation, OH, OW)
    dw = np.zeros((OC, T), dtype=x.dtype)
    for n0, n1 in _batches(N, T * L * x.itemsize):
        cols = _im2col(x[n0:n1], *geo, np.empty((T, n1 - n0, L), dtype=x.dtype))
        dy_t = np.ascontiguousarray(dy[n0:n1].reshape(n1 - n0, OC, L).transpose(1, 0, 2))
        dw += parallel_matmul(dy_t.reshape(OC, -1), cols.reshape(T, -1).T)
    return dw.reshape(w_shape)


# ----------------------------------------------------------------------------- the seam


def conv2d(x, w, b, stride, padding, dilation):
    """y (N, OC, OH, OW) = w (OC, C, KH, KW) cross-correlated with x (N, C, H, W), plus b (OC,)."""
    x, w, b = _check("conv2d", x, w, b)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    if not _use_direct(C, OC, OH, OW, stride):
        return _gemm_forward(x, w, b, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _zero_pad(w.reshape(OC, C * KH * KW), (2, 4))
    b2 = _zero_pad(np.zeros(OC, dtype=x.dtype) if b is None else b, (2,))
    offs = _zero_pad(_tap_offsets(C, KH, KW, Hp, Wp, dilation), (4,))
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    L = _wide_length(OH, OW, Wp)
    _direct_forward(x, wt, b2, offs, padding[0], padding[1], Hp, Wp, L, y)
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, dilation):
    """dL/dx (N, C, H, W) from dL/dy (N, OC, OH, OW)."""
    dy, w = _check("conv2d_backward_data", dy, w)
    x_shape = tuple(int(s) for s in x_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x_shape, w.shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_data: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    if not _use_direct(C, OC, OH, OW, stride):
        return _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _zero_pad(w.reshape(OC, C, KH * KW).transpose(1, 2, 0), (2, 1, 4))  # (C2, KH*KW, OC4)
    offs = _tap_offsets(1, KH, KW, Hp, Wp, dilation)
    dx = np.empty(x_shape, dtype=dy.dtype)
    L = _wide_length(OH, OW, Wp)
    _direct_backward_data(dy, wt, offs, padding[0], padding[1], Hp, Wp, L, dx)
    return dx


def conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation):
    """dL/dw (OC, C, KH, KW) from the input x and dL/dy."""
    x, dy = _check("conv2d_backward_weight", x, dy)
    w_shape = tuple(int(s) for s in w_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w_shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_weight: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    if not _use_direct(C, OC, OH, OW, stride):
        return _gemm_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    T = C * KH * KW
    offs = _zero_pad(_tap_offsets(C, KH, KW, Hp, Wp, dilation), (4,))
    P = max(1, min(N, numba.get_num_threads()))
    parts = np.zeros((P, OC + OC % 2, offs.size), dtype=x.dtype)
    L = _wide_length(OH, OW, Wp)
    _direct_backward_weight(x, dy, offs, padding[0], padding[1], Hp, Wp, L, parts)
    return np.ascontiguousarray(parts.sum(axis=0)[:OC, :T]).reshape(w_shape)
