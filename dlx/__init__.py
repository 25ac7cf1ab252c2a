"""dlx: a readable deep-learning framework with explicit backward passes, running on
NumPy + Numba (``device="cpu"``) or CuPy + hand-written CUDA kernels (``device="cuda"``).

    from dlx import nn, optim
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
"""

from dlx._checks import is_debug, set_debug
from dlx._device import (
    Device,
    DeviceError,
    HostSyncError,
    asarray,
    device,
    device_of,
    get_default_device,
    get_namespace,
    set_default_device,
    to_numpy,
)
from dlx._grad_mode import is_grad_enabled, no_grad
from dlx._random import get_rng_state, initial_seed, manual_seed, set_rng_state

__version__ = "0.1.0"

float32 = "float32"
float64 = "float64"

# The framework's submodules; the applications built on it are imported as dlx.apps.digits, dlx.apps.viz.
_SUBMODULES = ("data", "init", "metrics", "models", "nn", "optim", "testing", "training")
_LAZY = {  # name -> module that defines it, imported on first use
    "save": "dlx.serialization", "load": "dlx.serialization",
    "compile_step": "dlx.compile", "CompiledStep": "dlx.compile",
    **dict.fromkeys(("fit", "evaluate", "History", "Callback", "Checkpoint", "EarlyStopping"),
                    "dlx.training.supervised"),
}


def __getattr__(name):  # import submodules on first use: `import dlx` stays light
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"dlx.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlx' has no attribute {name!r}")

__all__ = [
    "Callback", "Checkpoint", "EarlyStopping", "History", "evaluate", "fit", "load", "save",
    "CompiledStep", "compile_step",
    "Device",
    "DeviceError",
    "HostSyncError",
    "asarray",
    "device",
    "device_of",
    "float32",
    "float64",
    "get_default_device",
    "get_namespace",
    "get_rng_state",
    "init",
    "initial_seed",
    "is_debug",
    "is_grad_enabled",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "set_debug",
    "set_default_device",
    "set_rng_state",
    "to_numpy",
]
