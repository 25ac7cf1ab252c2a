"""Convolution on the GPU: launchers of the kernels in conv2d.cu (forward with the bias fused,
backward-data as a gather, backward-weight and bias gradient as two-stage reductions).

Shapes: x (N, C, H, W), w (OC, C, KH, KW), b (OC,), y and dy (N, OC, OH, OW). ``stride``,
``padding`` and ``dilation`` are (h, w) tuples of ints.
"""

from __future__ import annotations

import cupy
import numpy as np

from ..base import conv2d_output_size
from . import kernels as K

FAMILY = "conv2d"
GROUP = 4  # channels per thread, as in conv2d.cu
# backward-weight kernels in conv2d.cu: (taps per pass TB, output channels per block OB)
BWD_WEIGHT_VARIANTS = ((1, 4), (4, 4), (9, 4), (16, 2), (25, 1))
SMEM_LIMIT = 48 * 1024  # dynamic shared memory a block gets without opting in


def _geometry(op, H, W, KH, KW, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"{op}: stride and dilation must be >= 1 and padding >= 0, got stride {stride}, "
            f"padding {padding}, dilation {dilation}"
        )
    OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: the {KH}x{KW} kernel (dilation {dilation}) is larger than the {H}x{W} "
            f"input padded by {padding}: the output would be {OH}x{OW}"
        )
    return OH, OW, (sh, sw, ph, pw, dh, dw)


def _chunk(channels: int, KK: int, itemsize: int, op: str) -> tuple[int, int]:
    """(channels staged at once, dynamic shared memory in bytes) for GROUP-wide weights."""
    per_channel = KK * GROUP * itemsize
    if per_channel > SMEM_LIMIT:
        raise ValueError(f"{op}: a {KK}-tap kernel is too large for the shared-memory staging")
    cc = max(1, K.SMEM_BUDGET // per_channel)
    return cc, min(cc, channels) * per_channel


def _splits(N: int, blocks_per_split: int, OHW: int, device_id: int) -> tuple[int, int]:
    """(S, NB): split the N samples of a reduction into S groups of NB so that the grid has
    about ``max_blocks`` blocks; NB * OHW stays below 2^31 and S within gridDim.y."""
    want = -(-K.max_blocks(device_id) // max(1, blocks_per_split))
    S = max(1, min(N, want, 65535))
    NB = -(-N // S)
    NB = max(1, min(NB, (2**31 - 1) // max(1, OHW)))
    S = -(-N // NB)
    if S > 65535:
        raise ValueError(f"batch of {N} samples of {OHW} outputs is too large to reduce")
    return S, NB


def _reduce(part, out, S: int, dtype: str, device_id: int) -> None:
    M = out.size
    grid = K.grid_1d(M, device_id)
    args = (part, out, *K.i32(S), np.int64(M))
    K.run(FAMILY, "reduce_splits", dtype, grid, (K.BLOCK, 1, 1), args)


def conv2d(x, w, b, stride, padding, dilation):
    """y = conv2d(x, w) + b, y of shape (N, OC, OH, OW)."""
    op = "conv2d"
    arrays = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    dtype, dev = K.check_float_arrays(op, **arrays)
    K.check_shape(op, "x", x, 4)
    K.check_shape(op, "w", w, 4)
    N, C, H, W = x.shape
    OC, C_w, KH, KW = w.shape
    if C_w != C:
        raise ValueError(f"{op}: w {tuple(w.shape)} expects {C_w} input channels, x {tuple(x.shape)} has {C}")
    if b is not None and tuple(b.shape) != (OC,):
        raise ValueError(f"{op}: b must have shape ({OC},), got {tuple(b.shape)}")
    OH, OW, geo = _geometry(op, H, W, KH, KW, stride, padding, dilation)
    groups = -(-OC // GROUP)
    if groups > 65535:
        raise ValueError(f"{op}: {OC} output channels are more than the kernel's grid allows")
    with cupy.cuda.Device(dev):
        y = cupy.empty((N, OC, OH, OW), dtype=dtype)
        if y.size == 0:
            return y
        CC, smem = _chunk(C, KH * KW, y.itemsize, op)
        tiles = -(-(N * OH * OW) // K.BLOCK)
        grid = (min(tiles, K.max_blocks(dev)), groups, 1)
        args = (x, w, w if b is None else b, y,
                *K.i32(N, C, H, W, OC, KH, KW, OH, OW, *geo, CC, b is not None))
        K.run(FAMILY, "conv2d_fwd", dtype, grid, (K.BLOCK, 1, 1), args, shared_mem=smem)
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, dilation):
    """dx of shape ``x_shape`` = (N, C, H, W) from dy (N, OC, OH, OW) and w (OC, C, KH, KW)."""
    op = "conv2d_backward_data"
    dtype, dev = K.check_float_arrays(op, dy=dy, w=w)
    K.check_shape(op, "dy", dy, 4)
    K.check_shape(op, "w", w, 4)
    N, C, H, W = (int(s) for s in x_shape)
    OC, C_w, KH, KW = w.shape
    OH, OW, geo = _geometry(op, H, W, KH, KW, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW) or C_w != C:
        raise ValueError(
            f"{op}: dy {tuple(dy.shape)} and w {tuple(w.shape)} do not match x {tuple(x_shape)}: "
            f"expected dy ({N}, {OC}, {OH}, {OW}) and w ({OC}, {C}, {KH}, {KW})"
        )
    groups = -(-C // GROUP)
    if groups > 65535:
        raise ValueError(f"{op}: {C} input channels are more than the kernel's grid allows")
    with cupy.cuda.Device(dev):
        dx = cupy.empty((N, C, H, W), dtype=dtype)
        if dx.size == 0:
            return dx
        CO, smem = _chunk(OC, KH * KW, dx.itemsize, op)
        tiles = -(-(N * H * W) // K.BLOCK)
        grid = (min(tiles, K.max_blocks(dev)), groups, 1)
        args = (dy, w, dx, *K.i32(N, C, H, W, OC, KH, KW, OH, OW, *geo, CO))
        K.run(FAMILY, "conv2d_bwd_data", dtype, grid, (K.BLOCK, 1, 1), args, shared_mem=smem)
    return dx


def conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation):
    """dw of shape ``w_shape`` = (OC, C, KH, KW) from x (N, C, H, W) and dy (N, OC, OH, OW)."""
    op = "conv2d_backward_weight"
    dtype, dev = K.check_float_arrays(op, x=x, dy=dy)
    K.check_shape(op, "x", x, 4)
    K.check_shape(op, "dy", dy, 4)
    N, C, H, W = x.shape
    OC, C_w, KH, KW = (int(s) for s in w_shape)
    OH, OW, geo = _geometry(op, H, W, KH, KW, stride, padding, dilation)
    if tuple(dy.shape) != (N, OC, OH, OW) or C_w != C:
        raise ValueError(
            f"{op}: x {tuple(x.shape)} and dy {tuple(dy.shape)} do not match w {tuple(w_shape)}: "
            f"expected dy ({N}, {OC}, {OH}, {OW})"
        )
    pairs = OC * C
    with cupy.cuda.Device(dev):
        if pairs == 0 or KH * KW == 0:
            return cupy.empty((OC, C, KH, KW), dtype=dtype)
        if N == 0:
            return cupy.zeros((OC, C, KH, KW), dtype=dtype)
        if pairs >= 2**31 or H * W >= 2**31:
            raise ValueError(f"{op}: {OC} x {C} channels of {H}x{W} are more than the kernel handles")
        KK = KH * KW
        TB, OB = next((v for v in BWD_WEIGHT_VARIANTS if KK <= v[0]), BWD_WEIGHT_VARIANTS[-1])
        blocks = -(-OC // OB) * C
        S, NB = _splits(N, blocks, OH * OW, dev)
        dw = cupy.empty((OC, C, KH, KW), dtype=dtype)
        part = dw if S == 1 else cupy.empty((S, OC, C, KH, KW), dtype=dtype)
        args = (x, dy, part, *K.i32(N, C, H, W, OC, KH, KW, OH, OW, *geo, NB))
        K.run(FAMILY, f"conv2d_bwd_weight_{TB}", dtype, (blocks, S, 1), (K.BLOCK, 1, 1), args)
        if S > 1:
            _reduce(part, dw, S, dtype, dev)
    return dw


def conv2d_backward_bias(dy):
    """db of shape (OC,): dy (N, OC, OH, OW) summed over N, OH and OW."""
    op = "conv2d_backward_bias"
    dtype, dev = K.check_float_arrays(op, dy=dy)
    K.check_shape(op, "dy", dy, 4)
    N, OC, OH, OW = dy.shape
    with cupy.cuda.Device(dev):
        if OC == 0:
            return cupy.empty((0,), dtype=dtype)
        if N * OH * OW == 0:
            return cupy.zeros((OC,), dtype=dtype)
        S, NB = _splits(N, OC, OH * OW, dev)
        db = cupy.empty((OC,), dtype=dtype)
        part = db if S == 1 else cupy.empty((S, OC), dtype=dtype)
        args = (dy, part, *K.i32(N, OC, OH * OW, NB))
        K.run(FAMILY, "conv2d_bwd_bias", dtype, (OC, S, 1), (K.BLOCK, 1, 1), args)
        if S > 1:
            _reduce(part, db, S, dtype, dev)
    return db


