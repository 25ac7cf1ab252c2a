"""Shared fixtures: the device list every device-parametrised test runs over."""

from __future__ import annotations

import importlib.util

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
