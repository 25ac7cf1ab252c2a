"""Training batches on the GPU: the launcher of ``make_batch`` in batch.cu.

``dlx.data.DataLoader`` calls it (through ``Backend.make_batch``) when its data set is kept on
the GPU as uint8 and its transforms are a RandomCrop and/or a RandomHorizontalFlip, then at
most one Normalize: the gather, the crop, the flip, the scaling and the normalisation of a
batch are one launch, bit for bit the xp code's given the same random choices.
"""

from __future__ import annotations

import cupy
import numpy as np

from . import kernels as K

FAMILY = "batch"
_UINT8, _INT64, _BOOL, _FLOAT32 = (np.dtype(t) for t in (np.uint8, np.int64, np.bool_, np.float32))


def _check(op, name, a, dtype, shape, dev=None):
    """ValueError unless ``a`` is a C-contiguous CuPy array of ``dtype`` and ``shape`` (None
    in it: any size) on GPU ``dev``."""
    if not isinstance(a, cupy.ndarray):
        raise ValueError(f"{op}: {name} must be a CuPy array on the GPU, got {type(a).__name__}")
    want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
    if (
        a.dtype != dtype
        or a.ndim != len(shape)
        or any(s is not None and s != t for s, t in zip(shape, a.shape))
        or not a.flags.c_contiguous
    ):
        raise ValueError(
            f"{op}: {name} must be a C-contiguous {dtype.name} array of shape {want}, "
            f"got {a.dtype.name} {tuple(a.shape)}"
        )
    if dev is not None and a.device.id != dev:
        raise ValueError(f"{op}: {name} is on cuda:{a.device.id} but data on cuda:{dev}")


def make_batch(data, idx, size, padding, oy=None, ox=None, flip=None, mean=None, std=None):
    """float32 (B, C, SH, SW): images ``idx`` of the uint8 ``data`` (N, C, H, W), padded by
    ``padding`` (left, top, right, bottom), cut to ``size`` at (oy[b], ox[b]), mirrored where
    ``flip[b]``, divided by 255 and, with ``mean`` / ``std``, normalised (see Backend.make_batch)."""
    op = "make_batch"
    _check(op, "data", data, _UINT8, (None,) * 4)
    dev = data.device.id
    _check(op, "idx", idx, _INT64, (None,), dev)
    n = idx.shape[0]
    if (oy is None) != (ox is None) or (mean is None) != (std is None):
        raise ValueError(f"{op}: oy and ox, and mean and std, come in pairs or not at all")
    for name, a, dtype in (("oy", oy, _INT64), ("ox", ox, _INT64), ("flip", flip, _BOOL)):
        if a is not None:
            _check(op, name, a, dtype, (n,), dev)
    N, C, H, W = data.shape
    channels = 0
    if mean is not None:
        _check(op, "mean", mean, _FLOAT32, (None,), dev)
        channels = mean.shape[0]
        _check(op, "std", std, _FLOAT32, (channels,), dev)
        if channels not in (1, C):
            raise ValueError(f"{op}: {channels} mean/std values for {C} channels")
    (SH, SW), (left, top, right, bottom) = size, padding
    if min(left, top, right, bottom) < 0 or not (0 < SH <= H + top + bottom and 0 < SW <= W + left + right):
        raise ValueError(
            f"{op}: a {SH}x{SW} window does not fit the {H}x{W} images padded by {tuple(padding)}"
        )
    geo = K.i32(C, H, W, SH, SW, top, left, oy is not None, flip is not None, channels)
    K.i32(SH * SW)  # the kernel's plane index is an int
    with cupy.cuda.Device(dev):
        out = cupy.empty((n, C, SH, SW), dtype=cupy.float32)
        if out.size:
            # an absent array's pointer is never read: any array of the C type stands in
            args = (
                data,
                idx,
                idx if oy is None else oy,
                idx if ox is None else ox,
                data if flip is None else flip.view(np.uint8),
                out if mean is None else mean,
                out if std is None else std,
                out,
                np.int64(out.size),
                *geo,
            )
            K.run(FAMILY, op, "float32", K.grid_1d(out.size, dev), (K.BLOCK, 1, 1), args)
    return out
