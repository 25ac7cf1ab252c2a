"""Max and average pooling on NumPy arrays with Numba kernels, forward and backward.

One loop nest per kernel, over the N*C planes in blocks ``lo, hi`` (compiled ``nogil``;
``threads.parallel_for`` runs the blocks at the same time). Forward kernels read padded planes
(with padding, one copy per call: -inf for max, 0 for average) so the window loops need no
bounds checks, and the common 2x2 window (LeNet) gets kernels with its size compiled in.
Backward kernels clip each window to the real input (floor mode) and add into it.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ..base import pool2d_output_size
from .threads import parallel_for

# _NO_RESHAPE: the kernels take the planes as 2-D views made here, never ``x.reshape(...)``
# inside: a reshape in a Numba kernel compiles its shape-mismatch error machinery, +0.27 s
# for a kernel with two of them (a three-line kernel: 0.36 against 0.09 s to compile; AMD
# EPYC VM, Numba 0.68, 2026-12-01); max pooling had three (1.14 s to compile).


def _check(name, x):
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got {x.dtype}")
    return np.ascontiguousarray(x)


def _sizes(x_shape, kernel, stride, padding):
    N, C, H, W = (int(s) for s in x_shape)
    OH, OW = pool2d_output_size(H, W, kernel, stride, padding)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"pool2d: output size {OH}x{OW} is empty for input {H}x{W}, kernel {kernel}, "
            f"stride {stride}, padding {padding}"
        )
    return N, C, H, W, OH, OW


def _padded_planes(x, PH, PW, fill):
    """x (N, C, H, W) as planes (N*C, Hp*Wp): a view when there is no padding, else a copy
    surrounded by ``fill`` (-inf for max, 0 for average). Padded here, not per plane inside
    the kernels: a padding helper compiled into a kernel cost ~0.4 s of its first compile."""
    N, C, H, W = x.shape
    if PH == 0 and PW == 0:
        return x.reshape(N * C, H * W)
    out = np.full((N * C, H + 2 * PH, W + 2 * PW), fill, dtype=x.dtype)
    out[:, PH:PH + H, PW:PW + W] = x.reshape(N * C, H, W)
    return out.reshape(N * C, -1)


@functools.cache
def _max_pool_kernel(window):
    """The max-pooling kernel with ``window`` = (KH, KW) compiled in, or (0, 0): read from the
    arguments. Constant sizes unroll the window loops: 2x2 on LeNet's pool1 0.78 -> 0.54 ms."""
    CKH, CKW = window

    @njit(nogil=True, cache=True)
    def max_pool(lo, hi, xf, H, W, KH, KW, SH, SW, PH, PW, OH, OW, yf, af):
        """yf, af (N*C, OH*OW): window maxima of the padded planes xf (N*C, Hp*Wp) and their
        flat index h*W + w in the unpadded plane (2-D views made by the caller: _NO_RESHAPE).

        The first maximum in row-major window order wins and NaN counts as a maximum (PyTorch's
        rule); padding is -inf, so a window of only -inf points at its first real element.
        """
        KH = CKH if CKH else KH
        KW = CKW if CKW else KW
        Wp = W + 2 * PW
        neg_inf = xf.dtype.type(-np.inf)
        for nc in range(lo, hi):
            src = xf[nc]
            for oh in range(OH):
                h0 = oh * SH - PH
                for ow in range(OW):
                    w0 = ow * SW - PW
                    best, idx = neg_inf, max(h0, 0) * W + max(w0, 0)
                    for i in range(KH):
                        for j in range(KW):
                            # an unsigned index skips Numba's negative-index wraparound
                            v = src[np.uint64((h0 + PH + i) * Wp + w0 + PW + j)]
                            # branch-free: an `if` here mispredicts about once per window
                            better = (v > best) | (v != v)
                            idx += ((h0 + i) * W + w0 + j - idx) * better
                            best = np.maximum(v, best)  # NaN-propagating, as the rule wants
                    yf[nc, oh * OW + ow] = best
                    af[nc, oh * OW + ow] = idx

    return max_pool


@njit(nogil=True, cache=True)
def _max_pool_backward(lo, hi, dy, argmax, dx):
    """dx (N, C, H*W): each dy added at the flat index its argmax names."""
    N, C, OH, OW = dy.shape
    HW = dx.shape[2]
    for nc in range(lo, hi):
        n, c = nc // C, nc % C
        plane = dx[n, c]
        plane[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = argmax[n, c, oh, ow]
                if 0 <= k < HW:  # argmax comes from max_pool2d; the check only guards memory
                    plane[k] += dy[n, c, oh, ow]


@functools.cache
def _avg_pool_kernel(window):
    """The average-pooling kernel, ``window`` as for ``_max_pool_kernel`` (2x2: 0.67 -> 0.22 ms)."""
    CKH, CKW = window

    @njit(nogil=True, cache=True)
    def avg_pool(lo, hi, xf, H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, yf):
        """yf (N*C, OH*OW): window sums over the zero-padded planes xf (N*C, Hp*Wp) divided by
        KH*KW or the real count."""
        KH = CKH if CKH else KH
        KW = CKW if CKW else KW
        Wp = W + 2 * PW
        zero = xf.dtype.type(0)
        for nc in range(lo, hi):
            src = xf[nc]
            for oh in range(OH):
                h0 = oh * SH - PH
                for ow in range(OW):
                    w0 = ow * SW - PW
                    s = zero
                    for i in range(KH):
                        for j in range(KW):
                            s += src[np.uint64((h0 + PH + i) * Wp + w0 + PW + j)]
                    if count_include_pad:  # floor mode: windows never pass the padded border
                        count = KH * KW
                    else:
                        count = (min(h0 + KH, H) - max(h0, 0)) * (min(w0 + KW, W) - max(w0, 0))
                    yf[nc, oh * OW + ow] = s / xf.dtype.type(count)

    return avg_pool


@njit(nogil=True, cache=True)
def _avg_pool_backward(lo, hi, dy, KH, KW, SH, SW, PH, PW, count_include_pad, dx):
    """dx (N, C, H, W): each dy / count spread over its window's real elements."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for nc in range(lo, hi):
        n, c = nc // C, nc % C
        plane = dx[n, c]
        plane[:] = 0
        for oh in range(OH):
            h0 = oh * SH - PH
            hs, he = max(h0, 0), min(h0 + KH, H)
            for ow in range(OW):
                w0 = ow * SW - PW
                ws, we = max(w0, 0), min(w0 + KW, W)
                count = KH * KW if count_include_pad else (he - hs) * (we - ws)
                g = dy[n, c, oh, ow] / dy.dtype.type(count)
                for h in range(hs, he):
                    for w in range(ws, we):
                        plane[h, w] += g


# Window sizes that get a kernel of their own (each costs a compilation, cached on disk).
_COMPILED_WINDOWS = {(2, 2)}


def _window(kernel):
    window = (int(kernel[0]), int(kernel[1]))
    return window if window in _COMPILED_WINDOWS else (0, 0)


def _geometry(kernel, stride, padding):
    return (int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1]),
            int(padding[0]), int(padding[1]))


def max_pool2d(x, kernel, stride, padding):
    """(y, argmax): window maxima (N, C, OH, OW) and their int32 flat index h*W + w."""
    x = _check("max_pool2d", x)
    N, C, H, W, OH, OW = _sizes(x.shape, kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32)
    planes = _padded_planes(x, int(padding[0]), int(padding[1]), -np.inf)
    parallel_for(_max_pool_kernel(_window(kernel)), N * C, planes, H, W,
                 *_geometry(kernel, stride, padding), OH, OW, y.reshape(N * C, OH * OW),
                 argmax.reshape(N * C, OH * OW))
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """dL/dx (N, C, H, W): each dy goes to the input element its window's argmax names."""
    dy = _check("max_pool2d_backward", dy)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    N, C, H, W, OH, OW = _sizes(x_shape, kernel, stride, padding)
    if dy.shape != (N, C, OH, OW) or argmax.shape != dy.shape:
        raise ValueError(
            f"max_pool2d_backward: dy {dy.shape} and argmax {argmax.shape} must be {(N, C, OH, OW)}"
        )
    dx = np.empty((N, C, H * W), dtype=dy.dtype)
    parallel_for(_max_pool_backward, N * C, dy, argmax, dx)
    return dx.reshape(N, C, H, W)


def avg_pool2d(x, kernel, stride, padding, count_include_pad=True):
    """y (N, C, OH, OW): window means; padding counts in the divisor if ``count_include_pad``."""
    x = _check("avg_pool2d", x)
    N, C, H, W, OH, OW = _sizes(x.shape, kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    kernel_fn = _avg_pool_kernel(_window(kernel))
    planes = _padded_planes(x, int(padding[0]), int(padding[1]), 0)
    parallel_for(kernel_fn, N * C, planes, H, W, *_geometry(kernel, stride, padding),
                 OH, OW, bool(count_include_pad), y.reshape(N * C, OH * OW))
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad=True):
    """dL/dx (N, C, H, W): each dy / divisor spread over its window."""
    dy = _check("avg_pool2d_backward", dy)
    N, C, H, W, OH, OW = _sizes(x_shape, kernel, stride, padding)
    if dy.shape != (N, C, OH, OW):
        raise ValueError(f"avg_pool2d_backward: dy has shape {dy.shape}, expected {(N, C, OH, OW)}")
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    parallel_for(_avg_pool_backward, N * C, dy, *_geometry(kernel, stride, padding),
                 bool(count_include_pad), dx)
    return dx
