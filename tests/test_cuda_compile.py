"""Checks of the CUDA backend that need no GPU, run on every machine (CI included):

- every backends/cuda/*.cu follows the rules (no #include, every kernel extern "C") and
  compiles in both dtypes with ``nvcc -ptx`` for sm_80 and sm_90 (skipped without nvcc) and
  with NVRTC, as CuPy compiles it (skipped without libnvrtc; DLX_NVRTC_LIB points at one);
- the CUDA launchers and kernels of convolution, pooling and random numbers run under the
  CPU emulation of tests/cuda_emulation.py; results are compared with the reference backend
  (skipped without g++);
- the DeviceError messages for a missing or broken CuPy, a driver mismatch, no GPU.

What the emulation cannot show (the GPU run does): timing, real memory and grid limits,
and races that only a GPU's scheduling exposes.
"""
from __future__ import annotations

import ast
import ctypes
import importlib
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from cuda_emulation import KERNEL_RE, MODES, _configure, _fresh_cuda_modules

CUDA_DIR = Path(__file__).resolve().parent.parent / "backends" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
DTYPES = ("float32", "float64")


def _source(path: Path, dtype: str) -> str:
    from dlx.backends.cuda import kernels

    return kernels.source(path.stem, dtype)


# --------------------------------------------------------------------------------------------
# Source rules and nvcc
# --------------------------------------------------------------------------------------------


def test_cu_files_exist():
    assert {p.stem for p in CU_FILES} >= {"conv2d", "pooling", "rng"}


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_rules(path):
    text = path.read_text()
    assert not re.search(r"^\s*#\s*include", text, re.M), f"{path.name} has an #include"
    for m in re.finditer(r"__global__", text):
        before = text[max(0, m.start() - 40) : m.start()]
        assert re.search(r'extern\s+"C"\s*$', before), (
            f"{path.name}: a __global__ kernel is not extern \"C\" (near offset {m.start()})"
        )
    assert KERNEL_RE.search(text), f"{path.name} defines no kernel"


def test_launchers_name_existing_kernels():
    """Every kernel name a launcher passes to kernels.run exists in its family's .cu file."""
    defined = {p.stem: set(KERNEL_RE.findall(p.read_text())) for p in CU_FILES}
    defined = {fam: {name for name, _ in ks} for fam, ks in defined.items()}
    for launcher in ("conv2d", "pooling", "rng"):
        text = (CUDA_DIR / f"{launcher}.py").read_text()
        family = re.search(r'^FAMILY = "(\w+)"', text, re.M).group(1)
        used = set(re.findall(r'(?:run\(FAMILY,|_fill\()\s*"(\w+)"', text))
        assert used and used <= defined[family], (launcher, used - defined[family])
    text = (CUDA_DIR / "conv2d.py").read_text()
    variants = ast.literal_eval(re.search(r"^BWD_WEIGHT_VARIANTS = (.*)$", text, re.M).group(1))
    assert {f"conv2d_bwd_weight_{tb}" for tb, _ in variants} <= defined["conv2d"]


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvcc_ptx(path, dtype, arch, tmp_path):
    src = tmp_path / f"{path.stem}_{dtype}.cu"
    src.write_text(_source(path, dtype))
    ptx = tmp_path / f"{path.stem}_{dtype}_{arch}.ptx"
    cmd = [NVCC, "-ptx", f"-arch={arch}", "-Werror", "all-warnings", str(src), "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx.read_text()))
    names = {name for name, _ in KERNEL_RE.findall(path.read_text())}
    assert names <= entries, f"kernels missing or mangled in the PTX: {names - entries}"


def _find_nvrtc():
    """libnvrtc: $DLX_NVRTC_LIB, the system's, a CUDA toolkit's or a pip wheel's (CuPy's)."""
    import ctypes.util
    import glob
    import site

    candidates = [os.environ.get("DLX_NVRTC_LIB", ""), ctypes.util.find_library("nvrtc") or ""]
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")))
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    for path in candidates:
        if path and "builtins" not in path:
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


NVRTC = _find_nvrtc()


def _nvrtc_compile(code: str, options: list[str]) -> tuple[int, str, str]:
    """(status, log, ptx) of NVRTC compiling ``code``, as CuPy's RawModule does."""
    lib = NVRTC
    prog = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"kernel.cu", 0, None, None)
    assert status == 0, f"nvrtcCreateProgram failed ({status})"
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if status == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value
        return status, log.value.decode(errors="replace"), ptx.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (no CUDA toolkit or CuPy wheel)")
@pytest.mark.parametrize("std", [None, "-std=c++11"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvrtc(path, dtype, arch, std):
    """NVRTC, which CuPy compiles with, accepts every file: no headers, implicit intrinsics."""
    from dlx.backends.cuda import kernels

    options = [f"-arch={arch}", *kernels.OPTIONS] + ([std] if std else [])
    status, log, ptx = _nvrtc_compile(_source(path, dtype), options)
    assert status == 0, f"NVRTC {options} failed:\n{log}"
    assert "warning" not in log.lower(), log
    names = {name for name, _ in KERNEL_RE.findall(path.read_text())}
    assert names <= set(re.findall(r"\.entry\s+(\w+)\(", ptx))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_conv2d(emu, dtype, mode, monkeypatch):
    backend, kernels = emu
    _configure(monkeypatch, kernels, mode)
    import cuda_selfcheck as selfcheck  # tests/cuda_selfcheck.py

    cases = selfcheck.conv_cases(seed=1 + (mode == "tight"), count=16, max_size=9)
    cases.append({"x": (3, 5, 7, 6), "w": (6, 5, 3, 2), "stride": (2, 1), "padding": (1, 2),
                  "dilation": (2, 1), "bias": True})
    cases.append({"x": (2, 2, 9, 9), "w": (3, 2, 3, 10), "stride": (1, 1), "padding": (1, 1),
                  "dilation": (1, 1), "bias": False})  # 30 taps: two backward-weight passes
    for i, case in enumerate(cases):
        selfcheck.check_conv(backend, case, dtype, seed=i, repeat=(i < 2))


def test_emulated_conv2d_full_blocks(emu):
    """The launchers' own 256-thread blocks (8 warps in the block reductions)."""
    backend, _ = emu
    import cuda_selfcheck as selfcheck  # tests/cuda_selfcheck.py

    case = {"x": (3, 5, 7, 6), "w": (6, 5, 3, 2), "stride": (2, 1), "padding": (1, 2),
            "dilation": (2, 1), "bias": True}
    selfcheck.check_conv(backend, case, "float32", seed=5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_pooling(emu, dtype, mode, monkeypatch):
    backend, kernels = emu
    _configure(monkeypatch, kernels, mode)
    if mode == "default":
        monkeypatch.setattr(kernels, "BLOCK", 256)
    import cuda_selfcheck as selfcheck  # tests/cuda_selfcheck.py

    cases = selfcheck.pool_cases(seed=3 + (mode == "tight"), count=15, max_size=11)
    cases.append({"x": (2, 3, 17, 15), "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1),
                  "count_include_pad": False})
    for i, case in enumerate(cases):
        selfcheck.check_pool(backend, case, dtype, seed=i, repeat=(i < 2))


def test_emulated_max_pool_nan_and_inf(emu):
    backend, _ = emu
    import cuda_selfcheck as selfcheck  # tests/cuda_selfcheck.py

    _, ref_pool = selfcheck._reference()
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [-np.inf, -np.inf, 0.0, 2.0]]]], dtype=np.float32)
    y, arg = backend.max_pool2d(backend.asarray(x, 0, "float32"), (2, 2), (2, 2), (0, 0))
    want_y, want_arg = ref_pool.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(backend.to_numpy(arg), np.asarray(want_arg))
    np.testing.assert_array_equal(backend.to_numpy(y), np.asarray(want_y))
    x = np.full((1, 1, 2, 2), -np.inf, dtype=np.float32)
    _, arg = backend.max_pool2d(backend.asarray(x, 0, "float32"), (2, 2), (1, 1), (1, 1))
    np.testing.assert_array_equal(backend.to_numpy(arg), np.asarray(ref_pool.max_pool2d(
        x, (2, 2), (1, 1), (1, 1))[1]))


def _philox(c, k):
    M = 0xFFFFFFFF
    c, k = list(c), list(k)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M, (p0 >> 32) ^ c[3] ^ k[1], p0 & M]
        k = [(k[0] + 0x9E3779B9) & M, (k[1] + 0xBB67AE85) & M]
    return c


def test_philox_known_answers():
    """The Python model of rng.cu's Philox4x32-10 against Random123's known-answer vectors."""
    assert _philox([0] * 4, [0] * 2) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _philox([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_emulated_generator(emu):
    backend, kernels = emu
    gen = backend.generator(0, [7, 1])
    key = gen.get_state()["key"]
    bits = backend.to_numpy(gen._fill("rng_bits64", (5,), "uint64"))
    want = [_philox([i, 0, 0, 0], key) for i in range(5)]
    assert [int(b) for b in bits] == [(w[0] << 32) | w[1] for w in want]

    state = gen.get_state()
    u = backend.to_numpy(gen.uniform((1000,), -2.0, 3.0, "float32"))
    z = backend.to_numpy(gen.normal((4000,), 1.0, 2.0, "float64"))
    p = backend.to_numpy(gen.permutation(50))
    r = backend.to_numpy(gen.integers(-3, 4, (2000,)))
    assert u.dtype == np.float32 and u.min() >= -2 and u.max() < 3 and abs(u.mean() - 0.5) < 0.2
    assert z.dtype == np.float64 and abs(z.mean() - 1) < 0.15 and abs(z.std() - 2) < 0.15
    assert p.dtype == np.int64 and sorted(p) == list(range(50))
    assert r.dtype == np.int64 and set(r) == set(range(-3, 4))
    gen.set_state(state)
    np.testing.assert_array_equal(backend.to_numpy(gen.uniform((1000,), -2.0, 3.0, "float32")), u)
    other = backend.generator(0, [7, 2])
    assert not np.array_equal(backend.to_numpy(other.uniform((1000,), -2.0, 3.0, "float32")), u)
    with pytest.raises(ValueError, match="bit_generator|philox"):
        gen.set_state({"bit_generator": "PCG64", "state": {}})


def test_emulated_argument_checks(emu):
    backend, _ = emu
    x = backend.asarray(np.zeros((1, 2, 5, 5)), 0, "float32")
    w = backend.asarray(np.zeros((3, 2, 3, 3)), 0, "float32")
    geo = ((1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="CuPy array"):
        backend.conv2d(np.zeros((1, 2, 5, 5), np.float32), w, None, *geo)
    with pytest.raises(ValueError, match="float64 but x is float32|w is float64"):
        backend.conv2d(x, backend.asarray(np.zeros((3, 2, 3, 3)), 0, "float64"), None, *geo)
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.conv2d(x[:, :, :, ::2], w, None, *geo)
    with pytest.raises(ValueError, match="int32|float32 or float64"):
        backend.max_pool2d(backend.asarray(np.zeros((1, 1, 4, 4)), 0, "int32"), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="input channels"):
        backend.conv2d(x, backend.asarray(np.zeros((3, 4, 3, 3)), 0, "float32"), None, *geo)
    with pytest.raises(ValueError, match="padding"):
        backend.max_pool2d(x, (2, 2), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="output would be"):
        backend.conv2d(x, backend.asarray(np.zeros((3, 2, 7, 7)), 0, "float32"), None, *geo)


def test_emulated_sync_names_the_failing_kernel(emu, monkeypatch):
    backend, kernels = emu
    import cupy

    def fail():
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    monkeypatch.setattr(cupy.cuda.get_current_stream(), "synchronize", fail)
    x = backend.asarray(np.ones((1, 1, 4, 4)), 0, "float32")
    monkeypatch.delenv("DLX_CUDA_SYNC", raising=False)
    backend.avg_pool2d(x, (2, 2), (2, 2), (0, 0))  # no sync, no error
    monkeypatch.setenv("DLX_CUDA_SYNC", "1")
    with pytest.raises(kernels.KernelError, match="avg_pool2d_fwd.*illegal memory access"):
        backend.avg_pool2d(x, (2, 2), (2, 2), (0, 0))


def test_emulated_backend_surface(emu):
    backend, _ = emu
    a = backend.asarray([[1.0, 2.0]], 0, "float32")
    assert backend.owns(a, 0) and not backend.owns(np.zeros(2), 0)
    assert backend.to_numpy(a).dtype == np.float32
    backend.check_index(0)
    with pytest.raises(Exception, match="cuda:3 does not exist: this machine has 1 GPU"):
        backend.check_index(3)
    backend.synchronize(0)
    y = backend.conv2d(backend.asarray(np.ones((0, 2, 5, 5)), 0, "float32"),
                       backend.asarray(np.ones((3, 2, 3, 3)), 0, "float32"), None,
                       (1, 1), (0, 0), (1, 1))
    assert y.shape == (0, 3, 3, 3)
    _, dw, db = backend.conv2d_backward(
        backend.asarray(np.ones((0, 2, 5, 5)), 0, "float32"),
        backend.asarray(np.ones((3, 2, 3, 3)), 0, "float32"),
        backend.asarray(np.ones((0, 3, 3, 3)), 0, "float32"), (1, 1), (0, 0), (1, 1))
    assert not backend.to_numpy(dw).any() and not backend.to_numpy(db).any()


# --------------------------------------------------------------------------------------------
# DeviceError messages (no GPU needed: the imports are made to fail)
# --------------------------------------------------------------------------------------------


class _FreshCuda:
    """Imports dlx.backends.cuda afresh with ``sys.modules["cupy"]`` set by the test."""

    def set_cupy(self, module):
        sys.modules["cupy"] = module  # None: `import cupy` raises ModuleNotFoundError

    def load(self, cupy=None):
        self.set_cupy(cupy)
        return importlib.import_module("dlx.backends.cuda")


@pytest.fixture
def fresh_cuda():
    with _fresh_cuda_modules():
        yield _FreshCuda()


def test_import_does_not_import_cupy():
    code = "import dlx, dlx.backends.cuda, sys; assert 'cupy' not in sys.modules, 'cupy imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_device_error_cupy_missing(fresh_cuda):
    mod = fresh_cuda.load(cupy=None)
    with pytest.raises(mod.DeviceError, match=r"CuPy is not installed.*pip install \"dlx\[cuda\]\""):
        mod.CUDABackend()
    assert mod.cuda_info()["available"] is False


def test_device_error_cupy_broken(fresh_cuda, monkeypatch):
    import builtins

    mod = fresh_cuda.load(cupy=None)
    del sys.modules["cupy"]
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("CuPy failed to load libnvrtc.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(mod.DeviceError, match=r"installed but unusable.*libnvrtc\.so\.12.*cupy-cuda"):
        mod.CUDABackend()


def _cupy_with_devices(count=None, error=None):
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)

    class CUDARuntimeError(RuntimeError):
        def __init__(self, status, text):
            super().__init__(text)
            self.status = status

    def get_count():
        if error is not None:
            raise CUDARuntimeError(*error)
        return count

    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError, getDeviceCount=get_count))
    return cp


def test_device_error_no_gpu(fresh_cuda, monkeypatch):
    mod = fresh_cuda.load(cupy=_cupy_with_devices(count=0))
    monkeypatch.setattr(mod, "_import_xp", lambda: np)
    with pytest.raises(mod.DeviceError, match="no NVIDIA GPU is visible"):
        mod.CUDABackend()
    fresh_cuda.set_cupy(_cupy_with_devices(
        error=(100, "cudaErrorNoDevice: no CUDA-capable device is detected")))
    with pytest.raises(mod.DeviceError, match="no NVIDIA GPU is visible"):
        mod.CUDABackend()
    info = mod.cuda_info()
    assert info["available"] is False and "no NVIDIA GPU" in info["error"]


def test_device_error_driver_mismatch(fresh_cuda, monkeypatch):
    mod = fresh_cuda.load(cupy=_cupy_with_devices(error=(
        35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime "
            "version")))
    monkeypatch.setattr(mod, "_import_xp", lambda: np)
    monkeypatch.setattr(mod, "_driver_present", lambda: True)
    with pytest.raises(mod.DeviceError, match="installed but unusable.*InsufficientDriver"):
        mod.CUDABackend()


def test_device_error_no_driver_is_not_blamed_on_the_wheel(fresh_cuda, monkeypatch):
    """CuPy installed on a machine without an NVIDIA driver: say so, suggest no reinstall."""
    mod = fresh_cuda.load(cupy=_cupy_with_devices(error=(
        35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime "
            "version")))
    monkeypatch.setattr(mod, "_import_xp", lambda: np)
    monkeypatch.setattr(mod, "_driver_present", lambda: False)
    with pytest.raises(mod.DeviceError, match="no NVIDIA driver was found") as err:
        mod.CUDABackend()
    assert "cupy-cuda" not in str(err.value) and "\n" not in str(err.value)
    assert "no NVIDIA driver" in mod.cuda_info()["error"]


def test_device_error_array_api_compat_missing(fresh_cuda, monkeypatch):
    mod = fresh_cuda.load(cupy=_cupy_with_devices(count=1))
    monkeypatch.setitem(sys.modules, "array_api_compat", None)
    with pytest.raises(mod.DeviceError, match="pip install array-api-compat"):
        mod.CUDABackend()


def test_emulated_cuda_info(emu):
    import dlx.backends.cuda as mod

    info = mod.cuda_info()
    assert info["available"] and info["gpus"][0]["name"] == "Emulated GPU"
    assert info["gpus"][0]["compute_capability"] == "9.0" and info["cuda_runtime"] == "12.4"

