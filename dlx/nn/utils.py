"""Weight reparametrisations, as ``torch.nn.utils``: ``spectral_norm(module)`` divides a
layer's weight by its largest singular value before every forward (Miyato et al., 2018).

    d = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(1, 64, 4, 2, 1)), nn.LeakyReLU(0.2), ...)

PyTorch's semantics and names: the trained parameter becomes ``weight_orig``; buffers
``weight_u`` and ``weight_v`` hold the power iteration's vectors; in training mode each
forward runs ``n_power_iterations`` steps of it (updating the buffers), in eval mode it uses
them as they are; ``module.weight`` is the normalised weight of the latest forward.
sigma = u^T W v with u and v held fixed, so the gradient of W = W_orig / sigma is
dL/dW_orig = (G - <G, W> u v^T) / sigma, with G = dL/dW the layer's own weight gradient.
"""

from __future__ import annotations

from collections import deque

from dlx._grad_mode import is_grad_enabled
from dlx._random import init_generator
from dlx.nn.module import MAX_PENDING_CALLS, Module, Parameter

__all__ = ["remove_spectral_norm", "spectral_norm"]


def _normalize(xp, x, eps):
    return x / xp.maximum(xp.sqrt(xp.sum(x * x)), eps)


class _SpectralNorm:
    """What spectral_norm attaches to a module: it wraps the module's forward and backward."""

    def __init__(self, module: Module, name: str, n_power_iterations: int, eps: float, dim: int):
        self.module, self.name, self.n, self.eps, self.dim = module, name, n_power_iterations, eps, dim
        weight = module._parameters.pop(name)
        module.register_parameter(name + "_orig", weight)
        xp, data = weight.device.xp, weight.data
        h = data.shape[dim]
        w = data.size // h
        dev = weight.device
        for suffix, size in (("_u", h), ("_v", w)):  # drawn on the host: the same on every device
            start = dev.asarray(init_generator().normal((size,), dtype="float64"), dtype=data.dtype)
            module.register_buffer(name + suffix, _normalize(xp, start, eps))
        self.calls = deque(maxlen=MAX_PENDING_CALLS)  # per forward: (weight, sigma, u, v)
        self.forward_plain, self.backward_plain = module.forward, module.backward
        object.__setattr__(module, name, Parameter(data))  # as PyTorch: the weight until a forward
        object.__setattr__(module, "forward", self.forward)
        object.__setattr__(module, "backward", self.backward)

    def _matrix(self, xp, w):
        """The weight as a (shape[dim], -1) matrix."""
        order = (self.dim, *[d for d in range(w.ndim) if d != self.dim])
        return xp.reshape(xp.permute_dims(w, order), (w.shape[self.dim], -1)), order

    def _normalised(self, power_iteration: bool):
        m = self.module
        w = m._parameters[self.name + "_orig"].data
        dev = m._parameters[self.name + "_orig"].device
        xp = dev.xp
        mat, _ = self._matrix(xp, w)
        u, v = m._buffers[self.name + "_u"], m._buffers[self.name + "_v"]

        def mv(a, vec):  # matrix @ vector through the backend's GEMM (capturable on CUDA)
            return xp.reshape(dev.backend.matmul(a, xp.reshape(vec, (-1, 1))), (-1,))

        if power_iteration:
            for _ in range(self.n):
                v = _normalize(xp, mv(mat.T, u), self.eps)
                u = _normalize(xp, mv(mat, v), self.eps)
            m._buffers[self.name + "_u"][...] = u  # in place: a captured step keeps the addresses
            m._buffers[self.name + "_v"][...] = v
            u, v = m._buffers[self.name + "_u"], m._buffers[self.name + "_v"]
        sigma = xp.sum(u * mv(mat, v))
        return w / sigma, sigma, u, v

    def forward(self, *args, **kwargs):
        weight, sigma, u, v = self._normalised(power_iteration=self.module.training)
        param = Parameter(weight)
        object.__setattr__(self.module, self.name, param)
        y = self.forward_plain(*args, **kwargs)
        if is_grad_enabled():
            self.calls.append((param, sigma, u, v))
        return y

    def backward(self, dy, **kwargs):
        m = self.module
        if not self.calls:
            return self.backward_plain(dy, **kwargs)  # raises: no forward to go back through
        param, sigma, u, v = self.calls.pop()
        object.__setattr__(m, self.name, param)  # the layer's gradient lands on this call's weight
        param.grad = None
        dx = self.backward_plain(dy, **kwargs)
        g, orig = param.grad, m._parameters[self.name + "_orig"]
        if g is not None:
            xp = orig.device.xp
            w = param.data
            # d sigma / d matrix, the outer product u v^T
            uv = orig.device.backend.matmul(xp.reshape(u, (-1, 1)), xp.reshape(v, (1, -1)))
            _, order = self._matrix(xp, w)
            shape = tuple(w.shape[d] for d in order)
            back = tuple(order.index(d) for d in range(w.ndim))
            uv = xp.permute_dims(xp.reshape(uv, shape), back)
            orig.accumulate_grad((g - xp.sum(g * w) * uv) / sigma)
        return dx


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """Reparametrise ``module.<name>`` as W_orig / sigma(W_orig) (see the module docstring);
    returns the module. ``dim`` (the output dimension) defaults to 1 for ConvTranspose2d, 0
    otherwise. Apply it before making the optimizer: the parameter is now ``<name>_orig``."""
    from dlx.nn.conv import ConvTranspose2d

    if not isinstance(module, Module):
        raise TypeError(f"spectral_norm: expected a Module, got {type(module).__name__}")
    if "_spectral_norm" in module.__dict__:
        raise ValueError(f"spectral_norm: {type(module).__name__}.{name} is already normalised")
    if name not in module._parameters or module._parameters[name] is None:
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter {name!r}")
    if n_power_iterations < 1:
        raise ValueError(f"spectral_norm: n_power_iterations must be >= 1, got {n_power_iterations}")
    if dim is None:
        dim = 1 if isinstance(module, ConvTranspose2d) else 0
    object.__setattr__(module, "_spectral_norm", _SpectralNorm(module, name, n_power_iterations,
                                                                eps, dim))
    return module


def remove_spectral_norm(module: Module, name: str = "weight") -> Module:
    """Undo ``spectral_norm``: ``<name>`` becomes a plain parameter holding the normalised
    weight (as PyTorch's), the buffers go."""
    hook = module.__dict__.get("_spectral_norm")
    if hook is None or hook.name != name:
        raise ValueError(f"remove_spectral_norm: {type(module).__name__}.{name} is not normalised")
    weight, _, _, _ = hook._normalised(power_iteration=False)
    for attr in ("_spectral_norm", "forward", "backward", name):
        module.__dict__.pop(attr, None)
    orig = module._parameters.pop(name + "_orig")
    orig.data, orig.grad = weight, None
    module.register_parameter(name, orig)
    for suffix in ("_u", "_v"):
        module._buffers.pop(name + suffix)
    return module
