"""Max and average pooling in plain Array-API code, forward and backward.

Like im2col in conv.py, each of the KH*KW window offsets (i, j) is one strided slice of
the padded input, an (N, C, OH, OW) block; pooling reduces over those blocks. Backward
adds into the same slices of a zero array. Windows never run past the padded input
(floor mode), and padded positions are -inf for max pooling, 0 for average pooling.
"""

from __future__ import annotations

import math

from ..base import pool2d_output_size
from .conv import namespace, pad2d, unpad2d


def _sizes(x_shape, kernel, stride, padding):
    N, C, H, W = x_shape
    OH, OW = pool2d_output_size(H, W, kernel, stride, padding)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"pool2d: output size {OH}x{OW} is empty for input {H}x{W}, kernel {kernel}, "
            f"stride {stride}, padding {padding}"
        )
    return N, C, H, W, OH, OW


def _window(i, j, OH, OW, stride):
    return (
        slice(None),
        slice(None),
        slice(i, i + stride[0] * (OH - 1) + 1, stride[0]),
        slice(j, j + stride[1] * (OW - 1) + 1, stride[1]),
    )


def _starts(xp, n_out, stride, pad, device):
    """Input row (or column) where each output's window starts; negative inside the padding."""
    return xp.arange(n_out, dtype=xp.int32, device=device) * stride - pad


def _flat_index(xp, i, j, OH, OW, W, stride, padding, device):
    """(OH, OW) int32: flat index h*W + w of window offset (i, j) in the unpadded plane."""
    h = _starts(xp, OH, stride[0], padding[0], device) + i
    w = _starts(xp, OW, stride[1], padding[1], device) + j
    return xp.reshape(h, (OH, 1)) * W + xp.reshape(w, (1, OW))


def max_pool2d(x, kernel, stride, padding):
    """(y, argmax): the window maxima (N, C, OH, OW) and where they are (int32 h*W + w).

    The first maximum in row-major window order wins, and NaN counts as a maximum, as in
    PyTorch; a window holding only -inf points at its first real element.
    """
    xp = namespace(x)
    N, C, H, W, OH, OW = _sizes(x.shape, kernel, stride, padding)
    dev = x.device
    x_pad = pad2d(x, padding, -math.inf)
    h0 = xp.clip(_starts(xp, OH, stride[0], padding[0], dev), min=0)
    w0 = xp.clip(_starts(xp, OW, stride[1], padding[1], dev), min=0)
    argmax = xp.zeros((N, C, OH, OW), dtype=xp.int32, device=dev)
    argmax = argmax + (xp.reshape(h0, (OH, 1)) * W + xp.reshape(w0, (1, OW)))
    y = xp.full((N, C, OH, OW), -math.inf, dtype=x.dtype, device=dev)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            v = x_pad[_window(i, j, OH, OW, stride)]
            better = (v > y) | xp.isnan(v)
            y = xp.where(better, v, y)
            here = _flat_index(xp, i, j, OH, OW, W, stride, padding, dev)
            argmax = xp.where(better, here, argmax)
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """dL/dx: each dy goes to the input element its window's argmax names."""
    xp = namespace(dy)
    N, C, H, W, OH, OW = _sizes(x_shape, kernel, stride, padding)
    dev = dy.device
    ph, pw = padding
    # Padded positions can share a flat index with a real one, but they are cropped away.
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype, device=dev)
    zero = xp.zeros_like(dy)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hit = argmax == _flat_index(xp, i, j, OH, OW, W, stride, padding, dev)
            dx_pad[_window(i, j, OH, OW, stride)] += xp.where(hit, dy, zero)
    return unpad2d(dx_pad, padding, H, W)


def _divisor(xp, x_shape, kernel, stride, padding, count_include_pad, dtype, device):
    """What each window's sum is divided by: KH*KW, or the number of real elements in it."""
    N, C, H, W, OH, OW = _sizes(x_shape, kernel, stride, padding)
    if count_include_pad:  # floor mode: a window never passes the padded border
        return float(kernel[0] * kernel[1])
    counts = []
    for n_out, k, s, p, size in (
        (OH, kernel[0], stride[0], padding[0], H),
        (OW, kernel[1], stride[1], padding[1], W),
    ):
        start = _starts(xp, n_out, s, p, device)
        counts.append(xp.clip(start + k, max=size) - xp.clip(start, min=0))
    count = xp.reshape(counts[0], (OH, 1)) * xp.reshape(counts[1], (1, OW))
    return xp.astype(count, dtype)


def avg_pool2d(x, kernel, stride, padding, count_include_pad=True):
    """y (N, C, OH, OW): window sums (zero padding) divided by ``_divisor``."""
    xp = namespace(x)
    N, C, H, W, OH, OW = _sizes(x.shape, kernel, stride, padding)
    x_pad = pad2d(x, padding)
    total = xp.zeros((N, C, OH, OW), dtype=x.dtype, device=x.device)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            total = total + x_pad[_window(i, j, OH, OW, stride)]
    return total / _divisor(
        xp, x.shape, kernel, stride, padding, count_include_pad, x.dtype, x.device
    )


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad=True):
    """dL/dx: each dy / divisor spread over its window's real elements."""
    xp = namespace(dy)
    N, C, H, W, OH, OW = _sizes(x_shape, kernel, stride, padding)
    ph, pw = padding
    g = dy / _divisor(xp, x_shape, kernel, stride, padding, count_include_pad, dy.dtype, dy.device)
    dx_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype, device=dy.device)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dx_pad[_window(i, j, OH, OW, stride)] += g
    return unpad2d(dx_pad, padding, H, W)
