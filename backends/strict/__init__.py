"""The strict backend: xp = array-api-strict on a non-default device, kernels from the
pure-xp reference backend. It refuses NumPy arrays and mixed devices, so it catches on a
machine without a GPU the bugs that would break CuPy (host arrays leaking into device code).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..base import Backend, DeviceError, HostSyncError
from ..host_random import NumpyGenerator, dtype_name
from ..reference import conv, pooling


def _import_strict():
    try:
        import array_api_strict
    except ImportError as e:
        raise DeviceError(
            "the 'strict' device needs array-api-strict, which is not installed. Fix: "
            "pip install array-api-strict (or pip install -e \".[test]\")"
        ) from e
    return array_api_strict


class StrictBackend(Backend):
    name = "strict"

    def __init__(self):
        self.xp = _import_strict()
        self._device = self.xp.Device("device1")
        self._host = self.xp.Device("CPU_DEVICE")

    @classmethod
    def info(cls) -> dict:
        try:
            xp = _import_strict()
        except DeviceError as e:
            return {"available": False, "error": str(e)}
        return {"available": True, "array-api-strict": xp.__version__}

    def array_device(self, index=None):
        return self._device

    def owns(self, x, index=None):
        return isinstance(x, self.xp._array_object.Array) and x.device == self._device

    def asarray(self, data, index=None, dtype=None):
        if dtype is not None:
            dtype = getattr(self.xp, dtype_name(dtype))
        return self.xp.asarray(np.asarray(data), dtype=dtype, device=self._device)

    def to_numpy(self, x):
        return np.asarray(x.to_device(self._host))

    def generator(self, index, seed):
        return NumpyGenerator(seed, place=lambda a: self.asarray(a))

    def synchronize(self, index=None):
        pass

    @contextlib.contextmanager
    def forbid_host_reads(self):
        """Every way a strict array reaches Python or NumPy raises HostSyncError while inside:
        what would make the host wait for a GPU."""
        cls = self.xp._array_object.Array
        names = ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__",
                 "__dlpack__", "to_device")
        saved = {n: cls.__dict__[n] for n in names if n in cls.__dict__}

        def refuse(name):
            def read(*args, **kwargs):
                raise HostSyncError(f"a device array was read back to the host ({name}) inside "
                                    f"a block that must not wait for the device")
            return read

        for n in saved:
            setattr(cls, n, refuse(n))
        try:
            yield
        finally:
            for n, f in saved.items():
                setattr(cls, n, f)

    conv2d = staticmethod(conv.conv2d)
    conv2d_backward_data = staticmethod(conv.conv2d_backward_data)
    conv2d_backward_weight = staticmethod(conv.conv2d_backward_weight)
    max_pool2d = staticmethod(pooling.max_pool2d)
    max_pool2d_backward = staticmethod(pooling.max_pool2d_backward)
    avg_pool2d = staticmethod(pooling.avg_pool2d)
    avg_pool2d_backward = staticmethod(pooling.avg_pool2d_backward)
