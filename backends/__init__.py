"""Device-specific code, installed as ``dlx.backends``: the only place that knows which
array library (NumPy, array-api-strict, CuPy) and which kernels (Numba, CUDA) run.

``load(device_type)`` imports a backend lazily, so ``import dlx`` never imports CuPy.
"""

from __future__ import annotations

_LOADED: dict = {}


def load(device_type: str):
    """Return the backend object for ``"cpu"``, ``"strict"`` or ``"cuda"`` (cached)."""
    backend = _LOADED.get(device_type)
    if backend is None:
        if device_type == "cpu":
            from .cpu import CPUBackend as cls
        elif device_type == "strict":
            from .strict import StrictBackend as cls
        elif device_type == "cuda":
            from .cuda import CUDABackend as cls
        else:
            raise ValueError(
                f"unknown device type {device_type!r}; use 'cpu', 'cuda', 'cuda:N' or 'strict'"
            )
        backend = _LOADED[device_type] = cls()
    return backend
