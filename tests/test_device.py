"""Devices, seeding and host/device conversion."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import dlx
from dlx import nn


def test_device_parsing():
    assert dlx.device("cpu").type == "cpu" and dlx.device("CPU").index is None
    assert str(dlx.device("cpu")) == "cpu" and dlx.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        dlx.device("tpu")
    with pytest.raises(ValueError, match="GPU index must be a number"):
        dlx.device("cuda:x")
    with pytest.raises(TypeError):
        dlx.device(3)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cuda_without_cupy_is_a_clear_device_error():
    with pytest.raises(dlx.DeviceError, match=r"pip install \"dlx\[cuda\]\"|dlx\[cuda\]"):
        dlx.device("cuda")


def test_default_device_from_environment():
    code = "import dlx; print(dlx.device())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "DLX_DEVICE": "strict"}, check=True)
    assert out.stdout.strip() == "strict"


def test_set_default_device():
    before = dlx.get_default_device()
    try:
        dlx.set_default_device("strict")
        assert nn.Linear(2, 2).device == dlx.device("strict")
    finally:
        dlx.set_default_device(before)


def test_import_does_not_import_gpu_libraries():
    code = "import sys, dlx; dlx.device('cpu'); print('cupy' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_asarray_and_to_numpy(dev):
    a = dlx.asarray([[1.5, 2.0]], device=dev)
    assert dlx.device_of(a) == dev and "float32" in str(a.dtype)
    b = dlx.asarray(np.arange(3), device=dev)
    assert "int64" in str(b.dtype)
    c = dlx.asarray(np.ones(2), device=dev, dtype="float64")
    assert "float64" in str(c.dtype)
    np.testing.assert_array_equal(dlx.to_numpy(a), np.array([[1.5, 2.0]], np.float32))


def test_manual_seed_reproduces_dropout(dev):
    x = dlx.asarray(np.ones((8, 8)), device=dev)
    dlx.manual_seed(3)
    a = dlx.to_numpy(nn.Dropout(0.5)(x))
    dlx.manual_seed(3)
    b = dlx.to_numpy(nn.Dropout(0.5)(x))
    dlx.manual_seed(4)
    c = dlx.to_numpy(nn.Dropout(0.5)(x))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rng_state_round_trip():
    dlx.manual_seed(5)
    x = dlx.asarray(np.ones((4, 4)))
    nn.Dropout(0.5)(x)
    state = dlx.get_rng_state()
    a = dlx.to_numpy(nn.Dropout(0.5)(x))
    dlx.manual_seed(99)
    dlx.set_rng_state(state)
    np.testing.assert_array_equal(dlx.to_numpy(nn.Dropout(0.5)(x)), a)


def test_get_namespace_rejects_mixed_devices():
    pytest.importorskip("array_api_strict")
    a = dlx.asarray([1.0], device="cpu")
    b = dlx.asarray([1.0], device="strict")
    assert dlx.get_namespace(a) is np
    with pytest.raises(ValueError, match="different devices"):
        dlx.get_namespace(a, b)
