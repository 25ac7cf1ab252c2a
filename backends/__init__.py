"""Device-specific code, installed as ``dlx.backends``: the only place that knows which
array library (NumPy, array-api-strict, CuPy) and which kernels (Numba, CUDA) run.

``load(device_type)`` imports a backend lazily, so ``import dlx`` never imports CuPy.
"""

from __future__ import annotations

_LOADED: dict = {}


DEVICE_TYPES = ("cpu", "strict", "cuda")


def backend_class(device_type: str):
    """The Backend subclass for ``"cpu"``, ``"strict"`` or ``"cuda"`` (imports its module only)."""
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
    return cls


def load(device_type: str):
    """Return the backend object for ``device_type`` (built once, then cached)."""
    backend = _LOADED.get(device_type)
    if backend is None:
        backend = _LOADED[device_type] = backend_class(device_type)()
    return backend


def info(device_type: str) -> dict:
    """What ``dlx info`` shows for a device type, without building its backend."""
    try:
        cls = backend_class(device_type)
    except ImportError as e:  # the backend's own module is missing
        return {"available": False, "error": str(e)}
    return cls.info()
