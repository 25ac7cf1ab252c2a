"""Devices: which array library and which kernels a computation runs on.

``dlx.device("cpu" | "cuda" | "cuda:N" | "strict")`` returns a ``Device``; its ``xp`` is
the array namespace and its ``backend`` the kernel set. This file never imports an array
library itself: the backends (``dlx.backends``) do, lazily.
"""

from __future__ import annotations

import os
import threading

from dlx.backends import info as _backend_info
from dlx.backends import load as _load_backend
from dlx.backends.base import (
    DeviceError,  # noqa: F401  (re-exported as dlx.DeviceError)
    HostSyncError,  # noqa: F401  (re-exported as dlx.HostSyncError)
)
from dlx.dtypes import dtype_name


class Device:
    """One device: ``type`` ('cpu', 'cuda' or 'strict'), ``index`` (GPU number or None)."""

    __slots__ = ("type", "index", "_backend")

    def __init__(self, type: str, index: int | None = None):
        self.type = type
        self.index = index
        self._backend = None

    @property
    def backend(self):
        """The kernels and array helpers of this device (loaded on first use)."""
        if self._backend is None:
            backend = _load_backend(self.type)
            if self.type == "cuda":
                backend.check_index(self.index)
            self._backend = backend
        return self._backend

    @property
    def xp(self):
        """The array namespace: numpy, array_api_strict or cupy (through array-api-compat)."""
        return self.backend.xp

    @property
    def array_device(self):
        """What the namespace's creation functions take as ``device=``."""
        return self.backend.array_device(self.index)

    def owns(self, x) -> bool:
        """True when ``x`` is an array living on this device."""
        return self.backend.owns(x, self.index)

    def asarray(self, data, dtype=None, copy: bool = False):
        """``data`` (host data or an array on any device) as an array on this device."""
        if self.owns(data):
            if dtype is None or _same_dtype(data.dtype, dtype):
                return self.xp.asarray(data, copy=True) if copy else data
            return self.xp.astype(data, self.dtype(dtype))
        if is_array(data):
            data = to_numpy(data)
        return self.backend.asarray(data, self.index, dtype)

    def dtype(self, name):
        """The namespace's dtype for 'float32', 'float64', np.float32, ... ."""
        return getattr(self.xp, dtype_name(name))

    def generator(self, seed):
        """A new random stream on this device seeded with ``seed`` (an int or a list of
        ints); its methods (uniform, normal, permutation, integers) return device arrays."""
        return self.backend.generator(self.index, seed)

    def synchronize(self) -> None:
        """Wait until all work queued on the device has finished."""
        self.backend.synchronize(self.index)

    def __eq__(self, other):
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self):
        return hash((self.type, self.index))

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        return f"device('{self}')"


def _same_dtype(a, b) -> bool:
    return dtype_name(a) == dtype_name(b)


def host_generator(seed):
    """A random stream on the host (NumPy's PCG64 seeded with ``seed``, the algorithm of the
    cpu and strict devices); its arrays are NumPy arrays. For numbers that must be the same
    whatever the device: initial weights, the loader's shuffle order."""
    from dlx.backends.host_random import NumpyGenerator

    return NumpyGenerator(seed)


def device_info(device_type: str) -> dict:
    """What ``dlx info`` shows for ``device_type`` ('cpu', 'strict' or 'cuda'): versions and
    hardware, or ``{"available": False, "error": ...}``; never raises and never needs the
    device to work."""
    return _backend_info(device_type)


_DEVICES: dict = {}
_LOCK = threading.Lock()
_default: Device | None = None


def _parse(spec: str) -> tuple[str, int | None]:
    text = spec.strip().lower()
    kind, _, idx = text.partition(":")
    if kind in ("cpu", "strict"):
        if idx:
            raise ValueError(f"device {spec!r}: the {kind} device takes no index; use {kind!r}")
        return kind, None
    if kind in ("cuda", "gpu"):
        if not idx:
            return "cuda", 0
        if not idx.isdigit():
            raise ValueError(f"device {spec!r}: the GPU index must be a number, e.g. 'cuda:0'")
        return "cuda", int(idx)
    raise ValueError(f"unknown device {spec!r}; use 'cpu', 'cuda', 'cuda:N' or 'strict'")


def device(spec: str | Device | None = None) -> Device:
    """The device named by ``spec``; with no argument the default device
    (``DLX_DEVICE`` if set, else 'cpu', unless ``set_default_device`` chose another)."""
    if spec is None:
        return get_default_device()
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {spec!r}")
    key = _parse(spec)
    with _LOCK:
        dev = _DEVICES.get(key)
        if dev is None:
            dev = _DEVICES[key] = Device(*key)
    _ = dev.backend  # load now, so an unusable device fails here with a DeviceError
    return dev


def get_default_device() -> Device:
    global _default
    if _default is None:
        _default = device(os.environ.get("DLX_DEVICE") or "cpu")
    return _default


def set_default_device(spec: str | Device) -> Device:
    """Make ``spec`` the device that modules and arrays use when none is given."""
    global _default
    _default = device(spec)
    return _default


def device_of(x) -> Device:
    """The device an array lives on (NumPy -> cpu, array-api-strict -> strict, CuPy -> cuda:N)."""
    top = type(x).__module__.split(".", 1)[0]
    if top == "numpy":
        return device("cpu")
    if top == "array_api_strict":
        dev = device("strict")
        if not dev.owns(x):
            raise ValueError(
                "this array-api-strict array is on its default CPU_DEVICE; dlx's strict device "
                "is array_api_strict.Device('device1'): create it with dlx.asarray(data, device='strict')"
            )
        return dev
    if top == "cupy":
        return device(f"cuda:{x.device.id}")
    raise TypeError(f"expected an array (numpy, cupy or array-api-strict), got {type(x).__name__}")


_ARRAY_LIBRARIES = ("numpy", "cupy", "array_api_strict")
_NAMESPACES: dict = {}  # array type -> namespace, for the one-array fast path


def is_array(x) -> bool:
    """True for an array (or array scalar) of NumPy, CuPy or array-api-strict."""
    return type(x).__module__.split(".", 1)[0] in _ARRAY_LIBRARIES and hasattr(x, "shape")


def get_namespace(*arrays):
    """The array namespace (xp) of the arrays; they must all live on one device.

    For CuPy this is array-api-compat's wrapper, never CuPy's own module.
    """
    if len(arrays) == 1:
        xp = _NAMESPACES.get(type(arrays[0]))
        if xp is None:
            xp = _NAMESPACES[type(arrays[0])] = device_of(arrays[0]).xp
        return xp
    if not arrays:
        return get_default_device().xp
    devices = {device_of(a) for a in arrays}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"arrays live on different devices ({names}); move them to one with .to()")
    return devices.pop().xp


def to_numpy(x):
    """A NumPy copy (or view, on CPU) of an array from any device; host data passes through."""
    if not is_array(x) or type(x).__module__.startswith("numpy"):
        import numpy

        return numpy.asarray(x)
    return device_of(x).backend.to_numpy(x)


def copy_into(old, new):
    """``new``'s values copied into ``old``'s memory when shape and dtype match (torch's
    ``copy_``: a step captured into a CUDA graph keeps reading the same addresses); else
    ``new`` itself. Returns the array that holds the values."""
    if old is None or tuple(old.shape) != tuple(new.shape) or old.dtype != new.dtype:
        return new
    old[...] = new
    return old


def asarray(data, device: str | Device | None = None, dtype=None):
    """``data`` as an array on ``device`` (the default device if None).

    float32 by default: host float64 data (Python floats, NumPy float64) becomes float32
    unless ``dtype="float64"`` is given; integers stay integers, device arrays keep
    their dtype.
    """
    dev = globals()["device"](device)
    if dtype is None and not _is_device_array(data):
        import numpy

        if numpy.asarray(data).dtype == numpy.float64:
            dtype = "float32"
    return dev.asarray(data, dtype=dtype)


def _is_device_array(x) -> bool:
    return is_array(x) and not type(x).__module__.startswith("numpy")
