"""The machinery under the CUDA launchers: CUDA C from ``backends/cuda/*.cu`` compiled on first
use (CuPy's ``RawModule``, cached in memory and on disk), argument checks, and launches that
name the kernel when it fails. ``DLX_CUDA_SYNC=1`` synchronises after every launch.

Each ``.cu`` file is one family of kernels written against ``real``; ``source`` puts
``typedef float real;`` (or ``double``) in front of it, so one text gives the float32 and the
float64 module, with the same ``extern "C"`` names in both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DIRECTORY = Path(__file__).resolve().parent
CTYPES = {"float32": "float", "float64": "double"}
_FLOAT_CHARS = {"f": "float32", "d": "float64"}
OPTIONS: tuple = ()  # NVRTC's defaults; CuPy adds -arch for the current GPU

BLOCK = 256  # threads per block of the one-thread-per-element kernels
BLOCKS_PER_SM = 16  # cap of grid-stride grids, and the target of the split reductions
SMEM_BUDGET = 16 * 1024  # bytes of staged weights per block: 8 blocks of 256 threads fit an SM

_modules: dict = {}
_functions: dict = {}
_sm_counts: dict = {}


class Capture:
    """What the launchers note while a step is being captured into a CUDA graph (graph.py
    makes one, sets ``current_capture`` for the capture's duration and acts on it after):
    ``uploads``, the host-to-device copies to make right after the capture ends, as
    [(device array, host array)]; ``rng_calls``, {generator: calls made in the step};
    ``keep``, arrays the graph reads that must live as long as it (and never move)."""

    def __init__(self):
        self.uploads: list = []
        self.rng_calls: dict = {}
        self.keep: list = []


#: the Capture in progress, None outside a capture
current_capture: Capture | None = None


class KernelError(RuntimeError):
    """A CUDA kernel failed to compile, to launch or (with DLX_CUDA_SYNC=1) to run."""


def families() -> list[str]:
    """The kernel families: one per ``.cu`` file."""
    return sorted(p.stem for p in DIRECTORY.glob("*.cu"))


def source(family: str, dtype: str) -> str:
    """The CUDA C compiled for ``family`` and ``dtype`` ('float32' or 'float64')."""
    text = (DIRECTORY / f"{family}.cu").read_text()
    return f'typedef {CTYPES[dtype]} real;\n#line 1 "{family}.cu"\n{text}'


def sync_enabled() -> bool:
    return os.environ.get("DLX_CUDA_SYNC", "") not in ("", "0")


def function(family: str, name: str, dtype: str):
    """Kernel ``name`` of ``family`` for ``dtype`` on the current device (compiled once)."""
    import cupy

    device_id = cupy.cuda.Device().id
    key = (family, name, dtype, device_id)
    fn = _functions.get(key)
    if fn is None:
        module_key = (family, dtype, device_id)
        module = _modules.get(module_key)
        try:
            if module is None:
                module = cupy.RawModule(code=source(family, dtype), options=OPTIONS)
                _modules[module_key] = module
            fn = module.get_function(name)
        except Exception as e:
            raise KernelError(
                f"could not compile CUDA kernel {name} from {family}.cu ({dtype}) for GPU "
                f"{device_id}: {type(e).__name__}: {e}"
            ) from e
        _functions[key] = fn
    return fn


def run(family: str, name: str, dtype: str, grid, block, args, shared_mem: int = 0) -> None:
    """Launch kernel ``name`` on the current device and stream. Every scalar in ``args`` must
    already be a NumPy scalar of the C parameter's type (CuPy passes a Python int as long long
    and a float as double, whatever the kernel expects)."""
    import cupy

    fn = function(family, name, dtype)
    try:
        fn(tuple(grid), tuple(block), args, shared_mem=shared_mem)
    except Exception as e:
        raise KernelError(
            f"CUDA kernel {name} ({family}.cu, {dtype}) failed to launch with grid {tuple(grid)}, "
            f"block {tuple(block)}, {shared_mem} bytes of shared memory: {type(e).__name__}: {e}"
        ) from e
    if sync_enabled():
        try:
            cupy.cuda.get_current_stream().synchronize()
        except Exception as e:
            raise KernelError(
                f"CUDA kernel {name} ({family}.cu, {dtype}) failed while running "
                f"(DLX_CUDA_SYNC=1 synchronised right after its launch): {type(e).__name__}: {e}"
            ) from e


def pointer(a) -> int:
    """The device address of array ``a``'s first element (the tables of multi-tensor kernels
    hold them)."""
    return a.data.ptr


def upload(host: np.ndarray):
    """A new device array holding ``host``'s values. While a step is being captured into a
    CUDA graph, where a copy from pageable host memory is refused, the array is allocated now
    (from the graph's own pool) and filled right after the capture ends, before any replay."""
    import cupy

    if current_capture is not None:
        out = cupy.empty(host.shape, dtype=host.dtype)
        current_capture.uploads.append((out, np.array(host, copy=True)))
        return out
    return cupy.asarray(host)


def sm_count(device_id: int) -> int:
    count = _sm_counts.get(device_id)
    if count is None:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        count = _sm_counts[device_id] = max(1, int(props["multiProcessorCount"]))
    return count


def max_blocks(device_id: int) -> int:
    """How many blocks a grid-stride grid gets at most (enough to fill every SM)."""
    return max(1, BLOCKS_PER_SM * sm_count(device_id))


def grid_1d(count: int, device_id: int, block: int = BLOCK) -> tuple[int, int, int]:
    """A grid-stride grid for ``count`` elements (count > 0)."""
    return (int(min(-(-count // block), max_blocks(device_id))), 1, 1)


def check_float_arrays(op: str, **arrays) -> tuple[str, int]:
    """Check that every array is a C-contiguous float32/float64 CuPy array, all of one dtype and
    on one GPU; return (dtype name, device id). Raises ValueError naming ``op`` and the array."""
    import cupy

    dtype = device_id = None
    first = None
    for name, a in arrays.items():
        if not isinstance(a, cupy.ndarray):
            raise ValueError(
                f"{op}: {name} must be a CuPy array on the GPU, got {type(a).__module__}."
                f"{type(a).__name__}"
            )
        # dtype.char, not dtype.name: NumPy computes .name in Python, and this runs for every
        # array of every launch (it was a quarter of a LeNet-5 step's launcher time)
        if a.dtype.char not in _FLOAT_CHARS:
            raise ValueError(f"{op}: {name} must be float32 or float64, got {a.dtype.name}")
        if not a.flags.c_contiguous:
            raise ValueError(
                f"{op}: {name} (shape {tuple(a.shape)}) must be C-contiguous; "
                f"pass xp.asarray(..., copy=True) of a transposed view"
            )
        if first is None:
            first, dtype, device_id = name, _FLOAT_CHARS[a.dtype.char], a.device.id
        elif _FLOAT_CHARS[a.dtype.char] != dtype:
            raise ValueError(f"{op}: {name} is {a.dtype.name} but {first} is {dtype}")
        elif a.device.id != device_id:
            raise ValueError(f"{op}: {name} is on cuda:{a.device.id} but {first} on cuda:{device_id}")
    return dtype, device_id


def check_shape(op: str, name: str, a, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(a.shape)}")


def i32(*values) -> list:
    """Scalars as np.int32, refusing values that do not fit."""
    out = []
    for v in values:
        v = int(v)
        if not -(2**31) <= v < 2**31:
            raise ValueError(f"size {v} does not fit the kernels' 32-bit parameters")
        out.append(np.int32(v))
    return out


def real(dtype: str, value) -> np.floating:
    """A scalar of the kernels' ``real`` type."""
    return np.dtype(dtype).type(value)
