"""Batch normalisation (Ioffe & Szegedy, 2015) and inverted dropout.

BatchNorm1d normalises (N, C) or (N, C, L) per channel, BatchNorm2d (N, C, H, W).
Training uses the batch's mean and biased variance and updates running statistics
with the unbiased variance; eval mode uses the running statistics (PyTorch's rules).
"""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx._random import generator
from dlx.nn._util import check_input, new_parameter
from dlx.nn.module import Module


class _BatchNorm(Module):
    _ranks: tuple = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = new_parameter((num_features,), device, dtype) if affine else None
        self.bias = new_parameter((num_features,), device, dtype) if affine else None
        if affine:
            self.weight.data = self.weight.data + 1.0
        if track_running_stats:
            stat = new_parameter((num_features,), device, dtype).data
            xp = get_namespace(stat)
            self.register_buffer("running_mean", stat)
            self.register_buffer("running_var", stat + 1.0)
            self.register_buffer("num_batches_tracked",
                                 xp.asarray(0, dtype=xp.int64, device=stat.device))

    def _shape(self, x):
        """Reduction axes and the broadcast shape of per-channel values for input ``x``."""
        axes = (0,) + tuple(range(2, x.ndim))
        return axes, (1, self.num_features) + (1,) * (x.ndim - 2)

    def forward(self, x):
        check_input(self, x, self._ranks, self._layout, self.num_features)
        xp = get_namespace(x)
        axes, bshape = self._shape(x)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            count = x.size // self.num_features
            if self.training and count < 2:
                raise ValueError(f"{type(self).__name__}: training needs more than 1 value per "
                                 f"channel, got input shape {tuple(x.shape)}")
            mean = xp.mean(x, axis=axes, keepdims=True)
            xc = x - mean
            var = xp.mean(xc * xc, axis=axes, keepdims=True)
            if self.training and self.track_running_stats:
                self._update_running_stats(xp, mean, var, count)
        else:
            mean = xp.reshape(self.running_mean, bshape)
            var = xp.reshape(self.running_var, bshape)
            xc = x - mean
        invstd = 1.0 / xp.sqrt(var + self.eps)
        xhat = xc * invstd
        self._cache = (xhat, invstd, use_batch_stats, axes, bshape)
        if not self.affine:
            return xhat
        return xhat * xp.reshape(self.weight.data, bshape) + xp.reshape(self.bias.data, bshape)

    def _update_running_stats(self, xp, mean, var, count):
        self.num_batches_tracked = self.num_batches_tracked + 1
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / int(self.num_batches_tracked)
        else:
            factor = self.momentum
        c = self.num_features
        unbiased = xp.reshape(var, (c,)) * (count / (count - 1))
        self.running_mean = (1 - factor) * self.running_mean + factor * xp.reshape(mean, (c,))
        self.running_var = (1 - factor) * self.running_var + factor * unbiased

    def backward(self, dy):
        xhat, invstd, use_batch_stats, axes, bshape = self._saved()
        xp = get_namespace(dy)
        if self.affine:
            if self._grad_enabled:
                self.weight.accumulate_grad(xp.sum(dy * xhat, axis=axes))
                self.bias.accumulate_grad(xp.sum(dy, axis=axes))
            dxhat = dy * xp.reshape(self.weight.data, bshape)
        else:
            dxhat = dy
        if not use_batch_stats:
            return dxhat * invstd
        # d/dx of (x - mean) / std, with mean and std functions of the whole batch:
        return invstd * (dxhat - xp.mean(dxhat, axis=axes, keepdims=True)
                         - xhat * xp.mean(dxhat * xhat, axis=axes, keepdims=True))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    _ranks = (4,)
    _layout = "(N, C, H, W)"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the
    rest by 1 / (1 - p), so eval mode is the identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be between 0 and 1, got {p}")
        self.p = float(p)

    def forward(self, x):
        self._check_device(x)
        if not self.training or self.p == 0.0:
            self._cache = None, True
            return x
        xp = get_namespace(x)
        if self.p == 1.0:
            mask = xp.zeros_like(x)
        else:
            u = generator(device_of(x)).uniform(x.shape, dtype=x.dtype)
            mask = xp.astype(u >= self.p, x.dtype) * (1.0 / (1.0 - self.p))
        self._cache = mask, False
        return x * mask

    def backward(self, dy):
        mask, identity = self._saved()
        return dy if identity else dy * mask

    def extra_repr(self):
        return f"p={self.p}"
