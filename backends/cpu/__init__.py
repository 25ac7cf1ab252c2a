"""The CPU backend: xp = NumPy; convolution, pooling and batch-norm kernels compiled by Numba."""

from __future__ import annotations

import numpy as np

from ..base import Backend
from ..host_random import NumpyGenerator, dtype_name
from . import activation, conv, memory, normalization, pooling, threads


class CPUBackend(Backend):
    name = "cpu"
    xp = np

    def __init__(self):
        threads.configure()  # dlx's threads get the cores, BLAS one thread (see threads.py)
        memory.configure()  # freed memory kept for the next step (see memory.py)

    @classmethod
    def info(cls) -> dict:
        return {"available": True, "threads": threads.threading_info(), "malloc": memory.status()}

    def array_device(self, index):
        return "cpu"

    def owns(self, x, index=None):
        return isinstance(x, (np.ndarray, np.generic))

    def asarray(self, data, index=None, dtype=None):
        return np.asarray(data, dtype=None if dtype is None else dtype_name(dtype))

    def to_numpy(self, x):
        return np.asarray(x)

    def generator(self, index, seed):
        return NumpyGenerator(seed)

    def synchronize(self, index=None):
        pass

    def compile_note(self):
        """Numba compiles a kernel on its first call unless its on-disk cache holds it (for
        the source as it is now): when no kernel is cached at all (a fresh install, or the
        sources changed), say that the first step waits for the compiler, so a progress bar
        at 0 % is not taken for a hang. (A run that needs one more kernel than the cache
        holds is reported after its first step, by dlx.fit.)"""
        for module in (activation, conv, pooling, normalization):
            for fn in vars(module).values():
                try:
                    if fn._cache._cache_file._load_index():  # Numba's cache index (internal API)
                        return None
                except Exception:  # not a cached dispatcher, or another Numba version
                    continue
        return ("compiling the CPU kernels (first run with this install only, a few seconds "
                "on 2 cores; cached on disk afterwards)")

    def all_reduce(self, world, x, index=None):
        out = np.array(x, copy=True, order="C")  # the arrays are host arrays: MPI reads them
        world.all_reduce_host(out)
        return out

    def broadcast(self, world, x, root=0, index=None):
        out = np.array(x, copy=True, order="C")
        world.broadcast_host(out, root)
        return out

    matmul = staticmethod(threads.parallel_matmul)
    conv2d = staticmethod(conv.conv2d)
    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    conv2d_backward_data = staticmethod(conv.conv2d_backward_data)
    conv2d_backward_weight = staticmethod(conv.conv2d_backward_weight)
    max_pool2d = staticmethod(pooling.max_pool2d)
    max_pool2d_backward = staticmethod(pooling.max_pool2d_backward)
    avg_pool2d = staticmethod(pooling.avg_pool2d)
    avg_pool2d_backward = staticmethod(pooling.avg_pool2d_backward)
    batch_norm_forward = staticmethod(normalization.batch_norm_forward)
    batch_norm_backward = staticmethod(normalization.batch_norm_backward)
    leaky_relu_forward = staticmethod(activation.leaky_relu_forward)
    leaky_relu_backward = staticmethod(activation.leaky_relu_backward)
