"""Matrix products on the GPU without cuBLAS: the launcher of the tiled kernels in gemm.cu.

The training step is captured into a CUDA graph and CuPy's matmul (cuBLAS) refuses stream
capture, so the Linear layers multiply with ``matmul`` here. Either operand may be the
transpose of a C-contiguous array (``w.T``): the kernel reads it in place, so x @ W.T,
dy @ W and dy.T @ x need no copies. Each element of the result is summed over k in order,
in the operands' dtype: two launches give the same bits.
"""

from __future__ import annotations

import cupy
import numpy as np

from . import kernels as K

FAMILY = "gemm"
#: tile edges of the kernels (gemm<T>_<a><b> in gemm.cu), largest first, and their threads
TILES = (64, 32)
THREADS = {64: 256, 32: 256}
_FLOAT_CHARS = {"f": "float32", "d": "float64"}
_INT_MAX = 2**31 - 1


def _check(op: str, name: str, a) -> str:
    if not isinstance(a, cupy.ndarray):
        raise ValueError(
            f"{op}: {name} must be a CuPy array on the GPU, got {type(a).__module__}.{type(a).__name__}"
        )
    if a.dtype.char not in _FLOAT_CHARS:
        raise ValueError(f"{op}: {name} must be float32 or float64, got {a.dtype.name}")
    if a.ndim != 2:
        raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(a.shape)}; reshape it to a matrix")
    return _FLOAT_CHARS[a.dtype.char]


def _storage(op: str, name: str, a):
    """(the C-contiguous array holding ``a``'s elements, whether ``a`` is its transpose)."""
    if a.flags.c_contiguous:
        return a, False
    if a.flags.f_contiguous:  # the transpose of a C-contiguous array: read it as stored
        return a.T, True
    raise ValueError(
        f"{op}: {name} (shape {tuple(a.shape)}, strides {tuple(a.strides)}) is neither C-contiguous "
        f"nor the transpose of a C-contiguous array; pass a contiguous copy, cupy.ascontiguousarray({name})"
    )


def _tile(M: int, N: int, device_id: int) -> int:
    """The largest tile whose grid gives every multiprocessor a block, else the smallest."""
    for t in TILES:
        if -(-M // t) * -(-N // t) >= K.sm_count(device_id):
            return t
    return TILES[-1]


def matmul(a, b):
    """a @ b for 2-D CuPy arrays a (M, K) and b (K, N) of one float dtype on one GPU, each
    C-contiguous or the transpose of a C-contiguous array: a new C-contiguous (M, N) array
    (zeros when K is 0)."""
    op = "matmul"
    dtype = _check(op, "a", a)
    if _check(op, "b", b) != dtype:
        raise ValueError(f"{op}: a is {dtype} but b is {b.dtype.name}; convert one with .astype()")
    (M, Ka), (Kb, N) = a.shape, b.shape
    if Ka != Kb:
        raise ValueError(
            f"{op}: inner dimensions differ: a {tuple(a.shape)} @ b {tuple(b.shape)} needs "
            f"a.shape[1] == b.shape[0]"
        )
    dev = a.device.id
    if b.device.id != dev:
        raise ValueError(f"{op}: b is on cuda:{b.device.id} but a on cuda:{dev}; copy one to the other's GPU")
    sa, ta = _storage(op, "a", a)
    sb, tb = _storage(op, "b", b)
    for what, n in (("a has", a.size), ("b has", b.size), ("the result would have", M * N)):
        if n > _INT_MAX:
            raise ValueError(
                f"{op}: {what} {n} elements, beyond the 32-bit indexing of the gemm "
                f"kernels (at most 2**31 - 1); split the product into blocks of rows or columns"
            )
    with cupy.cuda.Device(dev):
        c = cupy.empty((M, N), dtype=dtype)
        if M and N:
            t = _tile(M, N, dev)
            name = f"gemm{t}_{'t' if ta else 'n'}{'t' if tb else 'n'}"
            grid = (-(-M // t) * -(-N // t), 1, 1)
            args = (sa, sb, c, np.int32(M), np.int32(N), np.int32(Ka))
            K.run(FAMILY, name, dtype, grid, (THREADS[t], 1, 1), args)
    return c
