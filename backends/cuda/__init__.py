"""The CUDA backend: xp = CuPy through array-api-compat, convolution and pooling as
hand-written CUDA kernels (``*.cu`` beside their launchers, compiled on first use).

Importing this package imports nothing from CuPy; ``CUDABackend()`` does, and raises
``DeviceError`` naming the cause and the fix when the GPU cannot be used. Set
``DLX_CUDA_SYNC=1`` to synchronise after every kernel launch, so an illegal memory access is
reported at the kernel that made it.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ..base import Backend, DeviceError
from ..host_random import dtype_name

INSTALL = 'pip install "dlx[cuda]"'


def _import_cupy():
    """CuPy, or a DeviceError telling apart 'not installed' from 'installed but unusable'."""
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name not in ("cupy", None):  # CuPy is there but one of its own imports is missing
            raise DeviceError(_unusable(f"{type(e).__name__}: {e}")) from e
        raise DeviceError(
            f"CUDA was requested but CuPy is not installed. Fix: {INSTALL} "
            f"(installs cupy-cuda12x and array-api-compat)."
        ) from e
    except Exception as e:  # ImportError from a broken wheel, missing libcudart, ...
        raise DeviceError(_unusable(f"{type(e).__name__}: {e}")) from e
    return cupy


def _unusable(detail: str) -> str:
    return (
        "CUDA was requested and CuPy is installed but unusable (usually a CuPy wheel built for "
        "another CUDA major version than the driver supports). CuPy said: "
        f"{detail}. Fix: install the wheel matching the driver's CUDA version, e.g. "
        '"pip uninstall cupy-cuda12x && pip install cupy-cuda11x" for a CUDA 11 driver '
        "(nvidia-smi shows the version), or update the NVIDIA driver."
    )


def _driver_present() -> bool:
    """Whether the NVIDIA driver's library (libcuda) can be loaded on this machine."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


NO_DRIVER = ("CUDA was requested but no NVIDIA driver was found on this machine (libcuda cannot "
             "be loaded), so there is no usable NVIDIA GPU here. Use device='cpu', or install the "
             "NVIDIA driver on a machine with a GPU.")


def _device_count(cupy) -> int:
    """Number of visible GPUs; DeviceError when there is none or the driver refuses CuPy."""
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as e:
        text = str(e)
        if "NoDevice" in text or getattr(e, "status", None) == 100:
            count = 0
        elif not _driver_present():  # not a wheel/driver mismatch: there is no driver at all
            raise DeviceError(NO_DRIVER) from e
        else:
            raise DeviceError(_unusable(f"CUDARuntimeError: {text}")) from e
    except Exception as e:
        raise DeviceError(_unusable(f"{type(e).__name__}: {e}")) from e
    if count == 0:
        raise DeviceError(
            "CUDA was requested but no NVIDIA GPU is visible (CuPy found 0 devices; check "
            "nvidia-smi and CUDA_VISIBLE_DEVICES). Use device='cpu' on this machine."
        )
    return count


def _import_xp():
    try:
        import array_api_compat.cupy as xp
    except ModuleNotFoundError as e:
        if e.name in ("array_api_compat", "array_api_compat.cupy", None):
            raise DeviceError(
                "CUDA was requested but array-api-compat (the Array-API wrapper dlx uses over "
                f"CuPy) is not installed. Fix: pip install array-api-compat (or {INSTALL})."
            ) from e
        detail = f"{type(e).__name__}: {e}"
    except Exception as e:  # e.g. an array-api-compat too old or too new for this CuPy
        detail = f"{type(e).__name__}: {e}"
    else:
        return xp
    raise DeviceError(
        f"CUDA was requested but array-api-compat could not wrap this CuPy ({detail}). "
        "Fix: pip install -U array-api-compat."
    )


class CUDABackend(Backend):
    name = "cuda"
    host_generator = False  # Philox on the device (rng.cu), not NumPy's PCG64
    max_resident_bytes = 2 << 30  # a larger data set stays on the host, copied per batch

    def __init__(self):
        cupy = _import_cupy()
        self.xp = _import_xp()
        self.device_count = _device_count(cupy)
        try:  # a first allocation and a compiled kernel: catches a missing NVRTC or libcublas
            cupy.arange(2, dtype=cupy.float32).sum().item()
        except Exception as e:
            raise DeviceError(_unusable(f"{type(e).__name__}: {e}")) from e
        self._cupy = cupy
        from . import conv2d, optim, pooling, rng

        self._conv, self._pool, self._rng = conv2d, pooling, rng
        if os.environ.get("DLX_CUDA_FUSED", "1") != "0":  # 0: the optimizers' own xp code
            self.adam_step = optim.adam_step
        self._own_gemm = 0  # > 0 inside graph_kernels(): matmul through gemm.cu, not cuBLAS

    def capture_step(self, fn, args):
        from . import graph

        with self.graph_kernels():
            return graph.capture_step(fn, args)

    @contextlib.contextmanager
    def graph_kernels(self):
        self._own_gemm += 1
        try:
            yield
        finally:
            self._own_gemm -= 1

    def matmul(self, a, b):
        """cuBLAS (CuPy's matmul), or dlx's GEMM (gemm.cu) inside a captured step, which
        cuBLAS refuses, and under graph_kernels()."""
        from . import kernels

        if self._own_gemm or kernels.current_capture is not None:
            from . import gemm

            return gemm.matmul(a, b)
        return self.xp.matmul(a, b)

    @classmethod
    def info(cls) -> dict:
        return cuda_info()

    # the kernels: CUDA C in conv2d.cu and pooling.cu, launched from conv2d.py and pooling.py
    def conv2d(self, x, w, b, stride, padding, dilation):
        return self._conv.conv2d(x, w, b, stride, padding, dilation)

    def conv2d_backward_data(self, dy, w, x_shape, stride, padding, dilation):
        return self._conv.conv2d_backward_data(dy, w, x_shape, stride, padding, dilation)

    def conv2d_backward_weight(self, x, dy, w_shape, stride, padding, dilation, kept=None):
        return self._conv.conv2d_backward_weight(x, dy, w_shape, stride, padding, dilation)

    def conv2d_backward_bias(self, dy):
        return self._conv.conv2d_backward_bias(dy)

    def max_pool2d(self, x, kernel, stride, padding):
        return self._pool.max_pool2d(x, kernel, stride, padding)

    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        return self._pool.max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)

    def avg_pool2d(self, x, kernel, stride, padding, count_include_pad=True):
        return self._pool.avg_pool2d(x, kernel, stride, padding, count_include_pad)

    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding, count_include_pad=True):
        return self._pool.avg_pool2d_backward(dy, x_shape, kernel, stride, padding,
                                              count_include_pad)

    def make_batch(self, data, idx, size, padding, oy=None, ox=None, flip=None, mean=None, std=None):
        from . import batch  # batch.cu's launcher (imports CuPy, as the other launchers do)

        return batch.make_batch(data, idx, size, padding, oy, ox, flip, mean, std)

    def check_index(self, index) -> None:
        """DeviceError unless GPU ``index`` exists."""
        if not isinstance(index, int) or not 0 <= index < self.device_count:
            n = self.device_count
            raise DeviceError(
                f"cuda:{index} does not exist: this machine has {n} GPU{'s' if n != 1 else ''} "
                f"(cuda:0 .. cuda:{n - 1})"
            )

    def array_device(self, index):
        return self._cupy.cuda.Device(index)

    def owns(self, x, index=None):
        return isinstance(x, self._cupy.ndarray) and (index is None or x.device.id == index)

    def asarray(self, data, index=None, dtype=None):
        dtype = None if dtype is None else dtype_name(dtype)
        cp = self._cupy
        with cp.cuda.Device(index or 0):
            if isinstance(data, cp.ndarray):  # from another GPU: a device-to-device copy
                return cp.array(data, dtype=dtype, copy=True)
            return cp.asarray(np.asarray(data, dtype=dtype))

    def to_numpy(self, x):
        return self._cupy.asnumpy(x)

    def generator(self, index, seed):
        return self._rng.CUDAGenerator(index or 0, seed)

    def start_read(self, x):
        """An asynchronous copy into pinned host memory on the current stream, in queue order,
        and an event after it: the returned function looks at the event, never waits on it."""
        cp = self._cupy
        with cp.cuda.Device(x.device.id):
            host = cp.cuda.alloc_pinned_memory(x.nbytes)
            out = np.frombuffer(host, dtype=x.dtype, count=x.size).reshape(x.shape)
            x.get(out=out, blocking=False)
            done = cp.cuda.Event(block=False, disable_timing=True)
            done.record()
        return lambda: np.array(out) if done.done else None

    def synchronize(self, index=None):
        self._cupy.cuda.Device(index or 0).synchronize()

    def all_reduce(self, world, x, index=None):
        from . import nccl

        comm = nccl.communicator(world, index or 0)
        if comm is None:  # no NCCL here, or ranks sharing a GPU: through the host
            return super().all_reduce(world, x, index)
        return nccl.all_reduce(comm, x)

    def broadcast(self, world, x, root=0, index=None):
        from . import nccl

        comm = nccl.communicator(world, index or 0)
        if comm is None:
            return super().broadcast(world, x, root, index)
        return nccl.broadcast(comm, x, root)


def cuda_info() -> dict:
    """What ``dlx info`` shows about CUDA: versions and GPUs, or the DeviceError's text."""
    try:
        cupy = _import_cupy()
        count = _device_count(cupy)
    except DeviceError as e:
        return {"available": False, "error": str(e)}
    runtime = cupy.cuda.runtime
    info = {"available": True, "cupy": cupy.__version__}
    for key, get in (("cuda_runtime", runtime.runtimeGetVersion),
                     ("cuda_driver", runtime.driverGetVersion)):
        try:
            v = int(get())
            info[key] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception as e:  # pragma: no cover - depends on the machine
            info[key] = f"unknown ({e})"
    try:
        info["nvrtc"] = ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion())
    except Exception:  # pragma: no cover
        info["nvrtc"] = "unknown"
    try:
        import array_api_compat

        info["array_api_compat"] = array_api_compat.__version__
    except ImportError:
        info["array_api_compat"] = "not installed (pip install array-api-compat)"
    gpus = []
    for i in range(count):
        props = runtime.getDeviceProperties(i)
        name = props["name"]
        gpu = {
            "index": i,
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": int(props["multiProcessorCount"]),
            "memory_total_gib": round(int(props["totalGlobalMem"]) / 2**30, 2),
        }
        try:
            with cupy.cuda.Device(i):
                free, _ = runtime.memGetInfo()
            gpu["memory_free_gib"] = round(free / 2**30, 2)
        except Exception:  # pragma: no cover
            pass
        gpus.append(gpu)
    info["gpus"] = gpus
    return info
