"""Pooling on the GPU: launchers of the kernels in pooling.cu (max-pool with argmax, average
pool with PyTorch's count_include_pad, and their backwards as gathers).

Shapes: x (N, C, H, W), y, dy and argmax (N, C, OH, OW); argmax is int32, the flat index
h * W + w of the maximum in the unpadded input plane (first maximum wins).
"""

from __future__ import annotations

import cupy
import numpy as np

from ..base import pool2d_output_size
from . import kernels as K

FAMILY = "pooling"


def _geometry(op, H, W, kernel, stride, padding):
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    if min(KH, KW, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"{op}: kernel and stride must be >= 1 and padding >= 0, got kernel {kernel}, "
            f"stride {stride}, padding {padding}"
        )
    if 2 * ph > KH or 2 * pw > KW:
        raise ValueError(f"{op}: padding {padding} must be at most half of the kernel {kernel}")
    OH, OW = pool2d_output_size(H, W, kernel, stride, padding)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: the {KH}x{KW} window does not fit the {H}x{W} input padded by {padding}"
        )
    if H * W >= 2**31:
        raise ValueError(f"{op}: a {H}x{W} plane is too large for int32 argmax indices")
    return OH, OW, K.i32(H, W, OH, OW, KH, KW, sh, sw, ph, pw)


def _input_shape(op, x_shape, dy):
    N, C, H, W = (int(s) for s in x_shape)
    if tuple(dy.shape[:2]) != (N, C):
        raise ValueError(f"{op}: dy {tuple(dy.shape)} does not match x {tuple(x_shape)}")
    return N, C, H, W


def _check_out_shape(op, dy, N, C, OH, OW):
    if tuple(dy.shape) != (N, C, OH, OW):
        raise ValueError(f"{op}: dy must have shape ({N}, {C}, {OH}, {OW}), got {tuple(dy.shape)}")


def max_pool2d(x, kernel, stride, padding):
    """(y, argmax) of a max-pool over x (N, C, H, W)."""
    op = "max_pool2d"
    dtype, dev = K.check_float_arrays(op, x=x)
    K.check_shape(op, "x", x, 4)
    N, C, H, W = x.shape
    OH, OW, geo = _geometry(op, H, W, kernel, stride, padding)
    with cupy.cuda.Device(dev):
        y = cupy.empty((N, C, OH, OW), dtype=dtype)
        argmax = cupy.empty((N, C, OH, OW), dtype=cupy.int32)
        if y.size:
            args = (x, y, argmax, np.int64(y.size), *geo)
            K.run(FAMILY, "max_pool2d_fwd", dtype, K.grid_1d(y.size, dev), (K.BLOCK, 1, 1), args)
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """dx of shape ``x_shape``: each input element gets the dy of the windows whose argmax it is."""
    op = "max_pool2d_backward"
    dtype, dev = K.check_float_arrays(op, dy=dy)
    K.check_shape(op, "dy", dy, 4)
    if not isinstance(argmax, cupy.ndarray) or argmax.dtype != cupy.int32:
        raise ValueError(f"{op}: argmax must be the int32 CuPy array max_pool2d returned")
    if tuple(argmax.shape) != tuple(dy.shape) or not argmax.flags.c_contiguous:
        raise ValueError(
            f"{op}: argmax {tuple(argmax.shape)} must be C-contiguous with dy's shape {tuple(dy.shape)}"
        )
    if argmax.device.id != dev:
        raise ValueError(f"{op}: argmax is on cuda:{argmax.device.id} but dy on cuda:{dev}")
    N, C, H, W = _input_shape(op, x_shape, dy)
    OH, OW, geo = _geometry(op, H, W, kernel, stride, padding)
    _check_out_shape(op, dy, N, C, OH, OW)
    with cupy.cuda.Device(dev):
        dx = cupy.empty((N, C, H, W), dtype=dtype)
        if dx.size:
            args = (dy, argmax, dx, np.int64(dx.size), *geo)
            K.run(FAMILY, "max_pool2d_bwd", dtype, K.grid_1d(dx.size, dev), (K.BLOCK, 1, 1), args)
    return dx


def avg_pool2d(x, kernel, stride, padding, count_include_pad=True):
    """y of an average pool over x (N, C, H, W), PyTorch's divisor."""
    op = "avg_pool2d"
    dtype, dev = K.check_float_arrays(op, x=x)
    K.check_shape(op, "x", x, 4)
    N, C, H, W = x.shape
    OH, OW, geo = _geometry(op, H, W, kernel, stride, padding)
    with cupy.cuda.Device(dev):
        y = cupy.empty((N, C, OH, OW), dtype=dtype)
        if y.size:
            args = (x, y, np.int64(y.size), *geo, *K.i32(bool(count_include_pad)))
            K.run(FAMILY, "avg_pool2d_fwd", dtype, K.grid_1d(y.size, dev), (K.BLOCK, 1, 1), args)
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad=True):
    """dx of shape ``x_shape``: each input element gets dy / divisor of every window holding it."""
    op = "avg_pool2d_backward"
    dtype, dev = K.check_float_arrays(op, dy=dy)
    K.check_shape(op, "dy", dy, 4)
    N, C, H, W = _input_shape(op, x_shape, dy)
    OH, OW, geo = _geometry(op, H, W, kernel, stride, padding)
    _check_out_shape(op, dy, N, C, OH, OW)
    with cupy.cuda.Device(dev):
        dx = cupy.empty((N, C, H, W), dtype=dtype)
        if dx.size:
            args = (dy, dx, np.int64(dx.size), *geo, *K.i32(bool(count_include_pad)))
            K.run(FAMILY, "avg_pool2d_bwd", dtype, K.grid_1d(dx.size, dev), (K.BLOCK, 1, 1), args)
    return dx
