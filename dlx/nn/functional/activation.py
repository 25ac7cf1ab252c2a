"""Activations, softmax and log-softmax: forward and its derivative side by side.

Each keeps the least its backward needs (usually the output) and works on any shape.
Gradients through a kink are written ``dy * astype(mask, dtype)``: on NumPy that is ten
times faster than ``where(mask, dy, 0)`` for the large activations of a convnet. The
stable sigmoid and the softmax are written once here; losses and applications use them.
"""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx.nn.functional._op import op

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def sigmoid_parts(xp, x):
    """(sigmoid(x), exp(-|x|)) without overflow: 1/(1+e) for x >= 0, e/(1+e) below."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), e


def softmax_parts(xp, x, dim):
    """(x - max, exp(x - max), sum of exp) along ``dim``: softmax is exp / sum,
    log-softmax is (x - max) - log(sum)."""
    shifted = x - xp.max(x, axis=dim, keepdims=True)
    e = xp.exp(shifted)
    return shifted, e, xp.sum(e, axis=dim, keepdims=True)


@op
class relu:
    """max(x, 0); gradient 1 where the output is positive. (A backend may run both as fused
    kernels, ``Backend.leaky_relu_forward`` / ``_backward`` with slope 0: the CPU's Numba.)"""

    def forward(x):
        y = device_of(x).backend.leaky_relu_forward(x, 0.0)
        if y is None:
            y = get_namespace(x).maximum(x, 0.0)
        return y, y

    def backward(y, dy):
        g = device_of(dy).backend.leaky_relu_backward(y, dy, 0.0)
        if g is None:
            g = get_namespace(dy).astype(y > 0, dy.dtype)
            g *= dy  # in place: one temporary fewer
        return (g,)


@op
class leaky_relu:
    """x where x > 0, else negative_slope * x (fused kernels as for ``relu``)."""

    def forward(x, negative_slope=0.01):
        xp = get_namespace(x)
        if 0.0 <= negative_slope <= 1.0:  # then the leaky ReLU is max(x, slope * x)
            y = device_of(x).backend.leaky_relu_forward(x, negative_slope)
            if y is None:
                y = xp.maximum(x, x * negative_slope)
            return y, (x, negative_slope)
        return xp.where(x > 0, x, x * negative_slope), (x, negative_slope)

    def backward(saved, dy):
        x, slope = saved
        g = device_of(dy).backend.leaky_relu_backward(x, dy, slope)
        if g is None:
            g = get_namespace(dy).astype(x > 0, dy.dtype)  # 1 where x > 0, then 1 or slope:
            g *= 1.0 - slope  # in place (one temporary instead of four)
            g += slope
            g *= dy
        return (g,)


@op
class elu:
    """x where x > 0, else alpha * (exp(x) - 1); the derivative there is y + alpha."""

    def forward(x, alpha=1.0):
        xp = get_namespace(x)
        y = xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0.0)))
        return y, (x, y, alpha)

    def backward(saved, dy):
        x, y, alpha = saved
        return (get_namespace(dy).where(x > 0, dy, dy * (y + alpha)),)


@op
class selu:
    """scale * ELU(x, alpha) with the self-normalising constants of Klambauer et al. (2017)."""

    def forward(x):
        xp = get_namespace(x)
        y = SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0.0)))
        return y, (x, y)

    def backward(saved, dy):
        x, y = saved
        return (get_namespace(dy).where(x > 0, dy * SELU_SCALE, dy * (y + SELU_SCALE * SELU_ALPHA)),)


@op
class sigmoid:
    """1 / (1 + exp(-x)), computed without overflow; derivative y (1 - y)."""

    def forward(x):
        y, _ = sigmoid_parts(get_namespace(x), x)
        return y, y

    def backward(y, dy):
        return (dy * y * (1.0 - y),)


@op
class tanh:
    """tanh(x); derivative 1 - y²."""

    def forward(x):
        y = get_namespace(x).tanh(x)
        return y, y

    def backward(y, dy):
        return (dy * (1.0 - y * y),)


@op
class softmax:
    """exp(x - max) / sum(exp(x - max)) along ``dim``; dx = y (dy - sum(dy y))."""

    def forward(x, dim=-1):
        _, e, total = softmax_parts(get_namespace(x), x, dim)
        y = e / total
        return y, (y, dim)

    def backward(saved, dy):
        y, dim = saved
        return (y * (dy - get_namespace(dy).sum(dy * y, axis=dim, keepdims=True)),)


@op
class log_softmax:
    """x - max - log(sum(exp(x - max))) along ``dim``; dx = dy - exp(y) sum(dy)."""

    def forward(x, dim=-1):
        xp = get_namespace(x)
        shifted, _, total = softmax_parts(xp, x, dim)
        y = shifted - xp.log(total)
        return y, (y, dim)

    def backward(saved, dy):
        y, dim = saved
        xp = get_namespace(dy)
        return (dy - xp.exp(y) * xp.sum(dy, axis=dim, keepdims=True),)
