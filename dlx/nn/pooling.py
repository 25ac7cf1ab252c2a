"""Pooling (max, average) and nearest-neighbour upsampling modules over (N, C, H, W)
inputs; the math is in ``dlx.nn.functional.pooling``."""

from __future__ import annotations

from dlx.backends.base import pool2d_output_size
from dlx.nn import functional as F
from dlx.nn._util import check_input, pair
from dlx.nn.module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride, padding, ceil_mode):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        if ceil_mode:
            raise ValueError(f"{name}: ceil_mode=True is not supported; use padding instead")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")

    def _check(self, x):
        check_input(self, x, 4, "(N, C, H, W)")
        oh, ow = pool2d_output_size(x.shape[2], x.shape[3], self.kernel_size, self.stride,
                                    self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"{type(self).__name__}: input {x.shape[2]}x{x.shape[3]} is smaller "
                             f"than the window {self.kernel_size}")

    def backward(self, dy):
        return self._op.backward(self._pop(), dy)[0]

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each window; the gradient flows to the (first) maximum only."""

    _op = F.max_pool2d

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if dilation not in (1, (1, 1)):
            raise ValueError("MaxPool2d: dilation other than 1 is not supported")

    def forward(self, x):
        self._check(x)
        y, ctx = F.max_pool2d.forward(x, self.kernel_size, self.stride, self.padding)
        self._keep(ctx)
        return y


class AvgPool2d(_Pool2d):
    """Mean over each window. ``count_include_pad`` (default, as PyTorch) divides by the
    window area, padding included; False divides by the real input elements only."""

    _op = F.avg_pool2d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        self._check(x)
        y, ctx = F.avg_pool2d.forward(x, self.kernel_size, self.stride, self.padding,
                                      self.count_include_pad)
        self._keep(ctx)
        return y


class Upsample(Module):
    """Nearest-neighbour upsampling by integer factors: (N, C, H, W) -> (N, C, H*sh, W*sw).

    Backward sums the gradient over each sh x sw block.
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest"):
        super().__init__()
        if mode != "nearest":
            raise ValueError(f"Upsample: only mode='nearest' is supported, got {mode!r}")
        if size is not None:
            raise ValueError("Upsample: give scale_factor (an integer), not size")
        if scale_factor is None:
            raise ValueError("Upsample: scale_factor is required")
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if any(float(s) != int(s) or int(s) < 1 for s in sf):
            raise ValueError(f"Upsample: scale_factor must be a positive integer, got {scale_factor!r}")
        self.scale_factor = (int(sf[0]), int(sf[1]))
        self.mode = mode

    def forward(self, x):
        check_input(self, x, 4, "(N, C, H, W)")
        y, ctx = F.upsample_nearest2d.forward(x, self.scale_factor)
        self._keep(ctx)
        return y

    def backward(self, dy):
        return F.upsample_nearest2d.backward(self._pop(), dy)[0]

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode='{self.mode}'"
