"""Linear (fully connected) layer and the shape-only layers: Identity, Flatten, Unflatten.
Each holds its parameters and calls its pair in ``dlx.nn.functional``."""

from __future__ import annotations

import math

from dlx import init
from dlx.nn import functional as F
from dlx.nn._util import check_input, new_parameter
from dlx.nn.module import Module


class Linear(Module):
    """y = x W^T + b.  x (*, in_features) -> y (*, out_features); W (out, in), b (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: sizes must be positive, got ({in_features}, {out_features})")
        self.in_features, self.out_features = in_features, out_features
        self.weight = new_parameter((out_features, in_features), device, dtype)
        self.bias = new_parameter((out_features,), device, dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(in), 1/sqrt(in)).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        check_input(self, x, tuple(range(1, 9)), "(*, in_features)", self.in_features, -1)
        y, ctx = F.linear.forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._keep(ctx)
        return y

    can_skip_input_grad = True

    def backward(self, dy, input_grad: bool = True):
        """dL/dx (None when ``input_grad`` is False: the first layer of a model needs none)."""
        dx, dw, db = F.linear.backward(self._pop(), dy, need_dx=input_grad,
                                       need_params=self._grad_enabled)
        self._accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Identity(Module):
    """y = x."""

    def forward(self, x):
        y, ctx = F.identity.forward(x)
        self._keep(ctx)
        return y

    def backward(self, dy):
        return F.identity.backward(self._pop(), dy)[0]


def _reshape(module, x, shape):
    y, ctx = F.reshape.forward(x, shape)
    module._keep(ctx)
    return y


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        nd = x.ndim
        s, e = self.start_dim % max(nd, 1), self.end_dim % max(nd, 1)
        if nd == 0 or s > e:
            raise ValueError(
                f"Flatten: cannot flatten dims {self.start_dim}..{self.end_dim} of shape {tuple(x.shape)}"
            )
        shape = x.shape[:s] + (math.prod(x.shape[s : e + 1]),) + x.shape[e + 1 :]
        return _reshape(self, x, shape)

    def backward(self, dy):
        return F.reshape.backward(self._pop(), dy)[0]

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Splits dim ``dim`` into ``unflattened_size``: (N, 784) -> (N, 1, 28, 28)."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x):
        d = self.dim % x.ndim
        if x.shape[d] != math.prod(self.unflattened_size):
            raise ValueError(
                f"Unflatten: dim {self.dim} of shape {tuple(x.shape)} has size {x.shape[d]}, "
                f"which cannot become {self.unflattened_size}"
            )
        return _reshape(self, x, x.shape[:d] + self.unflattened_size + x.shape[d + 1 :])

    def backward(self, dy):
        return F.reshape.backward(self._pop(), dy)[0]

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
