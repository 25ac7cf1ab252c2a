"""Activation modules: each checks its input and calls its pair in ``dlx.nn.functional``
(the math, forward and derivative side by side, lives in ``functional/activation.py``)."""

from __future__ import annotations

from dlx.nn import functional as F
from dlx.nn.functional.activation import SELU_ALPHA, SELU_SCALE
from dlx.nn.module import Module


class _Activation(Module):
    """One op with fixed keyword arguments (``_op``, ``_kwargs()``); works on any shape."""

    _op: F.Op

    def _kwargs(self) -> dict:
        return {}

    def forward(self, x):
        self._check_device(x)
        y, ctx = self._op.forward(x, **self._kwargs())
        self._keep(ctx)
        return y

    def backward(self, dy):
        return self._op.backward(self._pop(), dy)[0]


class ReLU(_Activation):
    """max(x, 0); gradient 1 where the output is positive."""

    _op = F.relu


class LeakyReLU(_Activation):
    """x where x > 0, else negative_slope * x."""

    _op = F.leaky_relu

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _kwargs(self):
        return {"negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(_Activation):
    """x where x > 0, else alpha * (exp(x) - 1)."""

    _op = F.elu

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def _kwargs(self):
        return {"alpha": self.alpha}

    def extra_repr(self):
        return f"alpha={self.alpha}"


class SELU(_Activation):
    """scale * ELU(x, alpha) with the self-normalising constants of Klambauer et al. (2017)."""

    _op = F.selu
    alpha = SELU_ALPHA
    scale = SELU_SCALE


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), computed without overflow."""

    _op = F.sigmoid


class Tanh(_Activation):
    """tanh(x)."""

    _op = F.tanh


class _AlongDim(_Activation):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def _kwargs(self):
        return {"dim": self.dim}

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x - max) / sum(exp(x - max)) along ``dim``."""

    _op = F.softmax


class LogSoftmax(_AlongDim):
    """x - max - log(sum(exp(x - max))) along ``dim``."""

    _op = F.log_softmax
