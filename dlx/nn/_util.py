"""Small helpers the layers share: argument normalisation, parameter creation, input checks."""

from __future__ import annotations

from dlx._device import device as _device
from dlx.dtypes import FLOAT_DTYPES, dtype_name
from dlx.nn.module import Parameter


def pair(value, name: str, layer: str, minimum: int = 0) -> tuple[int, int]:
    """``3`` -> (3, 3); ``(2, 3)`` stays; anything else or below ``minimum`` is a ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {tuple(value)}")
    return int(value[0]), int(value[1])


def new_parameter(shape, device, dtype) -> Parameter:
    """A zero-filled parameter on ``device`` (default device if None), float32 unless asked."""
    dev = _device(device)
    name = "float32" if dtype is None else dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"parameters are float32 or float64, not {name}")
    xp = dev.xp
    return Parameter(xp.zeros(tuple(shape), dtype=getattr(xp, name), device=dev.array_device))


def check_input(module, x, ndim, layout: str, channels: int | None = None, channel_axis: int = 1):
    """Device/dtype check plus rank (int or tuple of allowed ranks) and channel count."""
    module._check_device(x)
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    name = type(module).__name__
    if x.ndim not in ranks:
        raise ValueError(
            f"{name}: expected input of shape {layout} ({' or '.join(map(str, ranks))}-D), "
            f"got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels in dim {channel_axis} of {layout}, "
            f"got {x.shape[channel_axis]} (input shape {tuple(x.shape)})"
        )
