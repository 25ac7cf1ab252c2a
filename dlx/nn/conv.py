"""2-D convolution and transposed convolution modules: parameters, checks and the calls to
their pairs in ``dlx.nn.functional`` (whose kernels come from the device's backend).

Conv2d:          x (N, C, H, W), weight (OC, C, KH, KW) -> y (N, OC, OH, OW)
ConvTranspose2d: x (N, C, H, W), weight (C, OC, KH, KW) -> y (N, OC, OH, OW); it is the
                 backward-data of a convolution, so it reuses the same kernels with the
                 roles of forward and backward-data swapped.
"""

from __future__ import annotations

import math

from dlx import init
from dlx.backends.base import conv2d_output_size
from dlx.nn import functional as F
from dlx.nn._util import check_input, new_parameter, pair
from dlx.nn.module import Module


class _ConvNd(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                 weight_shape, device, dtype):
        super().__init__()
        name = type(self).__name__
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"{name}: channel counts must be positive, got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        self.dilation = pair(dilation, "dilation", name, 1)
        self.weight = new_parameter(weight_shape + self.kernel_size, device, dtype)
        self.bias = new_parameter((out_channels,), device, dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # PyTorch's default for every conv: kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in)).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight.shape)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def _geometry(self):
        return self.stride, self.padding, self.dilation

    def _bias(self):
        return None if self.bias is None else self.bias.data

    can_skip_input_grad = True

    def backward(self, dy, input_grad: bool = True):
        """dL/dx (None when ``input_grad`` is False: the first layer of a model needs none)."""
        dx, dw, db = self._op.backward(self._pop(), dy, need_dx=input_grad,
                                       need_params=self._grad_enabled)
        self._accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")


class Conv2d(_ConvNd):
    """Cross-correlation of x with ``weight`` plus ``bias``, PyTorch's ``nn.Conv2d`` (groups=1)."""

    _op = F.conv2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         (out_channels, in_channels), device, dtype)

    def forward(self, x):
        check_input(self, x, 4, "(N, C, H, W)", self.in_channels)
        kh, kw = self.kernel_size
        oh, ow = conv2d_output_size(x.shape[2], x.shape[3], kh, kw, *self._geometry())
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"Conv2d: input of {x.shape[2]}x{x.shape[3]} is smaller than the kernel "
                f"{self.kernel_size} (dilation {self.dilation}, padding {self.padding}) allows"
            )
        y, ctx = F.conv2d.forward(x, self.weight.data, self._bias(), *self._geometry())
        self._keep(ctx)
        return y


class ConvTranspose2d(_ConvNd):
    """The gradient of a Conv2d with respect to its input, used as a layer (upsampling).

    OH = (H - 1) * stride - 2 * padding + dilation * (KH - 1) + output_padding + 1.
    """

    _op = F.conv_transpose2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, bias: bool = True, dilation=1, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         (in_channels, out_channels), device, dtype)
        self.output_padding = pair(output_padding, "output_padding", "ConvTranspose2d", 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"ConvTranspose2d: output_padding {self.output_padding} must be smaller than "
                    f"stride {self.stride} or dilation {self.dilation}"
                )

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return F.conv_transpose2d_output_size(h, w, self.kernel_size, self.stride, self.padding,
                                              self.dilation, self.output_padding)

    def forward(self, x):
        check_input(self, x, 4, "(N, C, H, W)", self.in_channels)
        oh, ow = self.output_size(x.shape[2], x.shape[3])
        if oh <= 0 or ow <= 0:
            raise ValueError(f"ConvTranspose2d: padding {self.padding} leaves no output for "
                             f"input {x.shape[2]}x{x.shape[3]}")
        y, ctx = F.conv_transpose2d.forward(x, self.weight.data, self._bias(), self.stride,
                                            self.padding, self.output_padding, self.dilation)
        self._keep(ctx)
        return y

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", output_padding={self.output_padding}" if self.output_padding != (0, 0) else "")
