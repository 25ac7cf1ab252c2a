"""Shared fixtures: the device list every device-parametrised test runs over, the small data
folders in official formats, and the CUDA backend on the CPU emulation (``emu``)."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import struct
import sys

import cuda_emulation  # tests/cuda_emulation.py
import numpy as np
import pytest

import dlx


def _cuda_ok() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        dlx.device("cuda")
    except dlx.DeviceError:
        return False
    return True


HAS_CUDA = _cuda_ok()
HAS_STRICT = importlib.util.find_spec("array_api_strict") is not None

DEVICES = [
    "cpu",
    pytest.param("strict", marks=pytest.mark.skipif(not HAS_STRICT, reason="array-api-strict not installed")),
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU (CuPy)")]),
]


@pytest.fixture(params=DEVICES)
def dev(request):
    """Each available device in turn: cpu, strict (array-api-strict), cuda (with a GPU)."""
    return dlx.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    dlx.manual_seed(0)
    yield


def write_idx(path, array):
    """An IDX file as MNIST's (big-endian dims, uint8 data), gzip-compressed."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def mnist_dir(tmp_path):
    """A tiny MNIST data folder in the official format: class c lights up row block c."""
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 128), ("t10k", 64)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c + 3 : 2 * c + 6, 4:24] = 250
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


# --------------------------------------------------------------------------------------------
# The CUDA backend on the CPU emulation (tests/cuda_emulation.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emu_build_dir(tmp_path_factory):
    if cuda_emulation.GXX is None:
        pytest.skip("g++ not found: the CPU emulation of the CUDA kernels needs a C++ compiler")
    return tmp_path_factory.mktemp("cuda_emulation")


@pytest.fixture
def emu(emu_build_dir, monkeypatch):
    """The CUDA backend running on the emulator: (backend, kernels module)."""
    with cuda_emulation._fresh_cuda_modules():
        sys.modules["cupy"] = cuda_emulation._fake_cupy(emu_build_dir)
        mod = importlib.import_module("dlx.backends.cuda")
        monkeypatch.setattr(mod, "_import_xp", lambda: np)
        kernels = importlib.import_module("dlx.backends.cuda.kernels")
        monkeypatch.setattr(kernels, "pointer", lambda a: a.__array_interface__["data"][0])
        yield mod.CUDABackend(), kernels
