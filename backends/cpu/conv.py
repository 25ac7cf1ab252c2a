"""Convolution on NumPy arrays with Numba kernels: forward and both backwards.

Two methods, picked per call by ``_use_direct``:

* direct, for stride 1 and few channels (LeNet): every (N, C, H, W) plane is zero-padded
  to (Hp, Wp) and flattened, and outputs are computed "wide", at row pitch Wp. Then the
  input under kernel offset (i, j) is one contiguous run, ``x_pad.flat[i*DH*Wp + j*DW :][:L]``
  with L = (OH-1)*Wp + OW, so each kernel tap is a long vectorisable axpy; the Wp - OW
  columns between output rows are computed and dropped. Two output channels and four taps
  per pass keep the accumulators in registers. Parallel over the batch.
* im2col + BLAS, for strided convolutions and many channels (DCGAN): Numba gathers
  cols (C*KH*KW, N*OH*OW), and one large matmul does the arithmetic.

Accumulation order differs from the reference backend, so results agree to rounding.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..base import conv2d_output_size

# "contract" lets LLVM fuse a*b + c into one FMA (one rounding instead of two: at least
# as accurate); "reassoc" lets it vectorise the dot products of the weight gradient.
_FMA = {"contract"}
_FMA_SUM = {"contract", "reassoc"}

# Direct loops beat im2col + BLAS while C*OC is small (measured in benchmarks/kernels_cpu.py).
_DIRECT_MAX_C_OC = 256
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


def _use_direct(C, OC, stride):
    return tuple(stride) == (1, 1) and C * OC <= _DIRECT_MAX_C_OC


def _tap_offsets(C, KH, KW, Hp, Wp, dilation, per_channel=True):
    """Flat offset of tap (c, i, j) in the padded, flattened planes: c*Hp*Wp + i*DH*Wp + j*DW."""
    c, i, j = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    offs = i * dilation[0] * Wp + j * dilation[1]
    if per_channel:
        offs = offs + c * Hp * Wp
    return np.ascontiguousarray(offs.reshape(-1), dtype=np.int64)


def _pairs(a, axis=0):
    """``a`` with a zero slice appended along ``axis`` if its length there is odd."""
    if a.shape[axis] % 2 == 0:
        return np.ascontiguousarray(a)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, 1)
    return np.ascontiguousarray(np.pad(a, pad))


# ----------------------------------------------------------------------------- direct


@njit(cache=True)
def _pad_planes(src, ph, pw, Hp, Wp, dst):
    """dst (C*Hp*Wp,) flat = src (C, H, W) zero-padded by (ph, pw)."""
    C, H, W = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(H):
            base = (c * Hp + h + ph) * Wp + pw
            dst[base : base + W] = src[c, h]


@njit(cache=True)
def _widen(src, Wp, dst):
    """dst (C, L) = rows of src (C, OH, OW) at pitch Wp, the gaps zero."""
    C, OH, OW = src.shape
    dst[:] = 0
    for c in range(C):
        for h in range(OH):
            dst[c, h * Wp : h * Wp + OW] = src[c, h]


@njit(parallel=True, cache=True, fastmath=_FMA)
def _direct_forward(x, wt, b, offs, ph, pw, Hp, Wp, y):
    """y (N, OC, OH, OW) = b[oc] + sum over taps t of wt[oc, t] * x_pad[n].flat[offs[t] + q].

    q runs over the wide output positions oh*Wp + ow; wt (OC2, C*KH*KW) and b (OC2,) have
    an even number of rows (a zero row appended when OC is odd).
    """
    N, C, H, W = x.shape
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    OC2, T = wt.shape
    L = (OH - 1) * Wp + OW
    T4 = T - T % 4
    for n in prange(N):
        xw = np.empty(C * Hp * Wp, dtype=x.dtype)
        _pad_planes(x[n], ph, pw, Hp, Wp, xw)
        acc = np.empty((2, L), dtype=y.dtype)
        a0 = acc[0]
        a1 = acc[1]
        for oc in range(0, OC2, 2):
            a0[:] = b[oc]
            a1[:] = b[oc + 1]
            for t in range(0, T4, 4):
                x0 = xw[offs[t] : offs[t] + L]
                x1 = xw[offs[t + 1] : offs[t + 1] + L]
                x2 = xw[offs[t + 2] : offs[t + 2] + L]
                x3 = xw[offs[t + 3] : offs[t + 3] + L]
                u0, u1, u2, u3 = wt[oc, t], wt[oc, t + 1], wt[oc, t + 2], wt[oc, t + 3]
                v0, v1 = wt[oc + 1, t], wt[oc + 1, t + 1]
                v2, v3 = wt[oc + 1, t + 2], wt[oc + 1, t + 3]
                for q in range(L):
                    e0, e1, e2, e3 = x0[q], x1[q], x2[q], x3[q]
                    a0[q] += u0 * e0 + u1 * e1 + u2 * e2 + u3 * e3
                    a1[q] += v0 * e0 + v1 * e1 + v2 * e2 + v3 * e3
            for t in range(T4, T):
                x0 = xw[offs[t] : offs[t] + L]
                u0, v0 = wt[oc, t], wt[oc + 1, t]
                for q in range(L):
                    a0[q] += u0 * x0[q]
                    a1[q] += v0 * x0[q]
            for k in range(min(2, OC - oc)):
                for oh in range(OH):
                    y[n, oc + k, oh, :] = acc[k, oh * Wp : oh * Wp + OW]


@njit(parallel=True, cache=True, fastmath=_FMA)
def _direct_backward_data(dy, wt, offs, ph, pw, Hp, Wp, dx):
    """dx (N, C, H, W): dy[n, oc] (wide) times wt[c, k, oc] added at offset offs[k] of plane c.

    The adjoint of ``_direct_forward`` for one channel pair at a time: wt (C2, KH*KW, OC)
    is the weight transposed, with an even number of rows; offs (KH*KW,) = i*DH*Wp + j*DW.
    """
    N, OC, OH, OW = dy.shape
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    C2, K = wt.shape[0], wt.shape[1]
    L = (OH - 1) * Wp + OW
    OC4 = OC - OC % 4
    for n in prange(N):
        dyw = np.empty((OC, L), dtype=dy.dtype)
        _widen(dy[n], Wp, dyw)
        acc = np.empty((2, Hp * Wp), dtype=dx.dtype)
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
                        a0[q] += u0 * e0 + u1 * e1 + u2 * e2 + u3 * e3
                        a1[q] += v0 * e0 + v1 * e1 + v2 * e2 + v3 * e3
                for oc in range(OC4, OC):
                    d0 = dyw[oc]
                    u0, v0 = wt[c, k, oc], wt[c + 1, k, oc]
                    for q in range(L):
                        a0[q] += u0 * d0[q]
                        a1[q] += v0 * d0[q]
            for k in range(min(2, C - c)):
                for h in range(H):
                    base = (h + ph) * Wp + pw
                    dx[n, c + k, h, :] = acc[k, base : base + W]


@njit(parallel=True, cache=True, fastmath=_FMA_SUM)
def _direct_backward_weight(x, dy, offs, ph, pw, Hp, Wp, parts):
    """parts[p] (OC2, C*KH*KW) += dw summed over the p-th slice of the batch.

    dw[oc, t] = sum over n and wide positions q of dy_wide[n, oc, q] * x_pad[n].flat[offs[t] + q]
    (the gaps of dy_wide are zero). One slice per thread, so no two threads write one sum.
    """
    N, C = x.shape[0], x.shape[1]
    OC, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    P, OC2, T = parts.shape
    L = (OH - 1) * Wp + OW
    T4 = T - T % 4
    for p in prange(P):
        xw = np.empty(C * Hp * Wp, dtype=x.dtype)
        dyw = np.zeros((OC2, L), dtype=dy.dtype)
        dw = parts[p]
        for n in range(p * N // P, (p + 1) * N // P):
            _pad_planes(x[n], ph, pw, Hp, Wp, xw)
            _widen(dy[n], Wp, dyw[:OC])
            for oc in range(0, OC2, 2):
                d0 = dyw[oc]
                d1 = dyw[oc + 1]
                for t in range(0, T4, 4):
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
                for t in range(T4, T):
                    x0 = xw[offs[t] : offs[t] + L]
                    s0, r0 = dw[oc, t], dw[oc + 1, t]
                    for q in range(L):
                        s0 += d0[q] * x0[q]
                        r0 += d1[q] * x0[q]
                    dw[oc, t], dw[oc + 1, t] = s0, r0


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
        y_t = w2 @ cols.reshape(T, -1)  # (OC, n*L)
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
        cols = (w_t @ dy_t.reshape(OC, -1)).reshape(T, n1 - n0, L)
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
        dw += dy_t.reshape(OC, -1) @ cols.reshape(T, -1).T
    return dw.reshape(w_shape)


# ----------------------------------------------------------------------------- the seam


def conv2d(x, w, b, stride, padding, dilation):
    """y (N, OC, OH, OW) = w (OC, C, KH, KW) cross-correlated with x (N, C, H, W), plus b (OC,)."""
    x, w, b = _check("conv2d", x, w, b)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w.shape, stride, padding, dilation)
    if not _use_direct(C, OC, stride):
        return _gemm_forward(x, w, b, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _pairs(w.reshape(OC, -1))
    b2 = _pairs(np.zeros(OC, dtype=x.dtype) if b is None else b)
    offs = _tap_offsets(C, KH, KW, Hp, Wp, dilation)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    _direct_forward(x, wt, b2, offs, padding[0], padding[1], Hp, Wp, y)
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, dilation):
    """dL/dx (N, C, H, W) from dL/dy (N, OC, OH, OW)."""
    dy, w = _check("conv2d_backward_data", dy, w)
    x_shape = tuple(int(s) for s in x_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x_shape, w.shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_data: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    if not _use_direct(C, OC, stride):
        return _gemm_backward_data(dy, w, x_shape, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    wt = _pairs(w.reshape(OC, C, KH * KW).transpose(1, 2, 0))  # (C2, KH*KW, OC)
    offs = _tap_offsets(1, KH, KW, Hp, Wp, dilation, per_channel=False)
    dx = np.empty(x_shape, dtype=dy.dtype)
    _direct_backward_data(dy, wt, offs, padding[0], padding[1], Hp, Wp, dx)
    return dx


def conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation):
    """dL/dw (OC, C, KH, KW) from the input x and dL/dy."""
    x, dy = _check("conv2d_backward_weight", x, dy)
    w_shape = tuple(int(s) for s in w_shape)
    N, C, H, W, OC, KH, KW, OH, OW = _sizes(x.shape, w_shape, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW):
        raise ValueError(f"conv2d_backward_weight: dy has shape {dy.shape}, expected {(N, OC, OH, OW)}")
    if not _use_direct(C, OC, stride):
        return _gemm_backward_weight(x, dy, w_shape, stride, padding, dilation, OH, OW)
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    offs = _tap_offsets(C, KH, KW, Hp, Wp, dilation)
    P = max(1, min(N, numba.get_num_threads()))
    parts = np.zeros((P, OC + OC % 2, C * KH * KW), dtype=x.dtype)
    _direct_backward_weight(x, dy, offs, padding[0], padding[1], Hp, Wp, parts)
    return parts.sum(axis=0)[:OC].reshape(w_shape)
