"""Random numbers made with NumPy on the host (the CPU and strict devices, and weight init)."""

from __future__ import annotations

import numpy as np


def dtype_name(dtype) -> str:
    """'float32' for np.float32, 'float32', array_api_strict.float32, cupy's float32, ..."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


class NumpyGenerator:
    """PCG64 stream; ``place`` moves each NumPy result to the device (identity on CPU)."""

    def __init__(self, seed, place=None):
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._place = place or (lambda a: a)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        dt = np.dtype(dtype_name(dtype))
        r = self._rng.random(tuple(shape), dtype=dt)
        return self._place((r * dt.type(high - low) + dt.type(low)).astype(dt, copy=False))

    def normal(self, shape, mean=0.0, std=1.0, dtype="float32"):
        dt = np.dtype(dtype_name(dtype))
        r = self._rng.standard_normal(tuple(shape), dtype=dt)
        return self._place((r * dt.type(std) + dt.type(mean)).astype(dt, copy=False))

    def permutation(self, n):
        return self._place(self._rng.permutation(n).astype(np.int64))

    def integers(self, low, high, shape):
        return self._place(self._rng.integers(low, high, size=tuple(shape), dtype=np.int64))

    def get_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state
