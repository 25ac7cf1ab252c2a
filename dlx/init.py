"""Weight initialisation, PyTorch's formulas (``torch.nn.init``).

Values are drawn on the host from the seeded init stream and then put on the
parameter's device, so one seed gives the same initial weights on every device.
Each function replaces ``param.data`` (dtype and device kept) and returns the parameter.
"""

from __future__ import annotations

import math

from dlx._random import init_generator


def calculate_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape``: (in, out) for Linear, times KH*KW for convs."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


# Values are drawn in float64 (the numbers every recorded run and checkpoint was made with:
# a float32 draw takes other bits from the stream, so other weights) but at most this many at
# a time, each chunk cast to the parameter's dtype into its place: the same values as one
# draw of the whole shape (the stream is consumed in order), with the float64 copy bounded at
# 8 MiB instead of twice the weight (Linear(4096, 4096) peaked at +257 MiB).
_CHUNK = 1 << 20


def _fill(param, draw):
    """param.data = draw(shape) (host float64) cast to the parameter's dtype and device."""
    dev, shape = param.device, tuple(param.shape)
    n = math.prod(shape)
    if n <= _CHUNK:
        param.data = dev.asarray(draw(shape), dtype=param.dtype)
        return param
    xp = dev.xp
    out = xp.empty((n,), dtype=param.dtype, device=param.data.device)
    for i in range(0, n, _CHUNK):
        out[i : i + _CHUNK] = dev.asarray(draw((min(_CHUNK, n - i),)), dtype=param.dtype)
    param.data = xp.reshape(out, shape)
    return param


def uniform_(param, a: float = 0.0, b: float = 1.0):
    return _fill(param, lambda shape: init_generator().uniform(shape, a, b, dtype="float64"))


def normal_(param, mean: float = 0.0, std: float = 1.0):
    return _fill(param, lambda shape: init_generator().normal(shape, mean, std, dtype="float64"))


def constant_(param, value: float):
    xp = param.device.xp
    param.data = xp.full(param.shape, value, dtype=param.dtype, device=param.data.device)
    return param


def zeros_(param):
    return constant_(param, 0.0)


def ones_(param):
    return constant_(param, 1.0)


def kaiming_uniform_(param, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """U(-bound, bound), bound = gain * sqrt(3 / fan) (He et al., 2015)."""
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(param.shape, mode))
    return uniform_(param, -bound, bound)


def kaiming_normal_(param, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """N(0, std²), std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(param.shape, mode))
    return normal_(param, 0.0, std)


def xavier_uniform_(param, gain: float = 1.0):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(param.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound)


def xavier_normal_(param, gain: float = 1.0):
    fan_in, fan_out = calculate_fan_in_and_fan_out(param.shape)
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
