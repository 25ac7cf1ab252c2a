"""Loss modules: the checks on input and target (shapes, dtypes, devices; the values only
under ``dlx.set_debug(True)``, as they need a host read), then the pair in
``dlx.nn.functional.loss``. ``loss_fn(input, target)`` returns a 0-d device array (no host
sync); ``loss_fn.backward()`` returns dL/dinput for the latest call.

reduction="mean" (default) averages over all elements (over the batch for the
classification losses), "sum" adds them up.
"""

from __future__ import annotations

from dlx._checks import is_debug
from dlx._device import device_of, get_namespace, is_array
from dlx.dtypes import dtype_name
from dlx.nn import functional as F
from dlx.nn.module import Module

_REDUCTIONS = ("mean", "sum")


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def _check_pair(self, input, target, same_shape: bool = True):
        self._check_device(input, "input")
        name = type(self).__name__
        if not is_array(target):
            raise TypeError(f"{name}: target must be an array on the input's device, got "
                            f"{type(target).__name__}; use dlx.asarray(target, device=...)")
        if device_of(target) != device_of(input):
            raise ValueError(f"{name}: target is on device '{device_of(target)}' but input is on "
                             f"'{device_of(input)}'; move them to one device")
        if same_shape:
            if tuple(target.shape) != tuple(input.shape):
                raise ValueError(f"{name}: target shape {tuple(target.shape)} differs from input "
                                 f"shape {tuple(input.shape)}")
            if dtype_name(target.dtype) != dtype_name(input.dtype):
                raise ValueError(f"{name}: target dtype {dtype_name(target.dtype)} differs from "
                                 f"input dtype {dtype_name(input.dtype)}; cast the target")

    _op: F.Op

    def _call(self, input, target, **kwargs):
        loss, ctx = self._op.forward(input, target, reduction=self.reduction, **kwargs)
        self._keep(ctx)
        return loss

    def backward(self, grad=1.0):
        """dL/dinput; ``grad`` is dL/dloss (a float or a 0-d array), 1 by default."""
        return self._op.backward(self._pop(), grad)[0]

    def extra_repr(self):
        return f"reduction='{self.reduction}'"


class MSELoss(_Loss):
    """mean((input - target)²)."""

    _op = F.mse_loss

    def forward(self, input, target):
        self._check_pair(input, target)
        return self._call(input, target)


class BCELoss(_Loss):
    """-(t log p + (1 - t) log(1 - p)) for probabilities p in [0, 1]; each log is clamped
    at -100 as in PyTorch, so p = 0 or 1 gives a finite loss."""

    _op = F.binary_cross_entropy

    def forward(self, input, target):
        self._check_pair(input, target)
        xp = get_namespace(input)
        if is_debug() and not bool(xp.all((input >= 0) & (input <= 1))):  # a host read
            raise ValueError("BCELoss: input must hold probabilities in [0, 1]; "
                             "for raw scores use BCEWithLogitsLoss")
        return self._call(input, target)  # else such an input gives a NaN loss


class BCEWithLogitsLoss(_Loss):
    """BCE of sigmoid(x), computed stably: max(x, 0) - x t + log(1 + exp(-|x|))."""

    _op = F.binary_cross_entropy_with_logits

    def forward(self, input, target):
        self._check_pair(input, target)
        return self._call(input, target)


class _ClassLoss(_Loss):
    """Shared checks for (N, C) scores with int labels (N,)."""

    def _check_labels(self, input, target):
        self._check_pair(input, target, same_shape=False)
        name = type(self).__name__
        xp = get_namespace(input)
        if input.ndim != 2:
            raise ValueError(f"{name}: expected input of shape (N, C), got {tuple(input.shape)}")
        if target.ndim != 1 or target.shape[0] != input.shape[0]:
            raise ValueError(f"{name}: expected target of shape ({input.shape[0]},) with class "
                             f"indices, got {tuple(target.shape)}")
        if not xp.isdtype(target.dtype, "integral"):
            raise ValueError(f"{name}: target must hold integer class indices, got dtype "
                             f"{dtype_name(target.dtype)}")
        c = input.shape[1]
        if is_debug() and not bool(xp.all((target >= 0) & (target < c))):  # a host read
            raise ValueError(f"{name}: target holds class indices outside [0, {c - 1}]")


class CrossEntropyLoss(_ClassLoss):
    """-log softmax(logits)[label]: logits (N, C), int labels (N,). Gradient softmax - target.

    ``label_smoothing`` ε (PyTorch's name and meaning) trains against the target
    distribution (1 - ε) one_hot + ε / C instead of the one-hot vector.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    _op = F.cross_entropy

    def forward(self, input, target):
        self._check_labels(input, target)
        return self._call(input, target, label_smoothing=self.label_smoothing)

    def extra_repr(self):
        smooth = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return super().extra_repr() + smooth


class NLLLoss(_ClassLoss):
    """-input[label] for log-probabilities (N, C) (the output of LogSoftmax)."""

    _op = F.nll_loss

    def forward(self, input, target):
        self._check_labels(input, target)
        return self._call(input, target)


class HingeGANLoss(_Loss):
    """The hinge loss of GANs on raw discriminator scores (no sigmoid). For the
    discriminator (``role="discriminator"``, the default): relu(1 - s) for real images
    (target 1) and relu(1 + s) for fake ones (target 0), the targets ``BCEWithLogitsLoss``
    takes; for the generator (``role="generator"``): -s, the target ignored."""

    _op = F.hinge_gan_loss

    def __init__(self, reduction: str = "mean", role: str = "discriminator"):
        super().__init__(reduction)
        if role not in ("discriminator", "generator"):
            raise ValueError(f"HingeGANLoss: role must be 'discriminator' or 'generator', got {role!r}")
        self.role = role

    def forward(self, input, target):
        self._check_pair(input, target)
        return self._call(input, target, role=self.role)

    def extra_repr(self):
        return super().extra_repr() + f", role='{self.role}'"
