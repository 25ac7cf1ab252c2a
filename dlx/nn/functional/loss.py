"""Losses as ops: ``forward(input, target, ...) -> (0-d loss, ctx)`` (no host sync) and
``backward(ctx, grad=1.0) -> (dL/dinput,)``, where ``grad`` is dL/dloss.

reduction="mean" averages over all elements (over the batch for the classification
losses), "sum" adds them up. The classification losses take logits or log-probabilities
(N, C) and integer labels (N,). Invalid values (a label outside the classes, a BCE input
outside [0, 1]) make the loss and its gradient NaN on the device, so no step waits for a
check; ``dlx.set_debug(True)`` makes the modules check eagerly and raise instead.
"""

from __future__ import annotations

from dlx._device import get_namespace
from dlx.nn.functional._op import op
from dlx.nn.functional.activation import sigmoid_parts, softmax_parts


def _scale(reduction: str, count: int) -> float:
    """d(reduced)/d(element): 1/count for the mean, 1 for the sum."""
    return 1.0 / count if reduction == "mean" else 1.0


def _reduce(xp, per_element, count: int, reduction: str):
    total = xp.sum(per_element)
    return total / count if reduction == "mean" else total


def _times(g, grad):
    """dL/dinput = g * dL/dloss (skipped for the usual dL/dloss = 1)."""
    return g if (isinstance(grad, (int, float)) and grad == 1.0) else g * grad


def _poison(xp, bad, loss, g):
    """(loss, g) as NaN where ``bad`` (a 0-d device bool) holds, unchanged otherwise: an
    invalid input shows as a NaN loss without reading anything back to the host."""
    return xp.where(bad, xp.nan, loss), xp.where(bad, xp.nan, g)


def _labels_outside(xp, target, num_classes: int):
    return xp.any((target < 0) | (target >= num_classes))


def one_hot(target, num_classes: int, dtype):
    """(N,) integer labels -> (N, C) rows of 0 and 1 in ``dtype``."""
    xp = get_namespace(target)
    classes = xp.arange(num_classes, device=target.device)
    return xp.astype(xp.reshape(target, (-1, 1)) == classes, dtype)


@op
class mse_loss:
    """mean((input - target)²)."""

    def forward(input, target, reduction="mean"):
        diff = input - target
        return (_reduce(get_namespace(input), diff * diff, diff.size, reduction),
                diff * (2.0 * _scale(reduction, diff.size)))

    def backward(g, grad=1.0):
        return (_times(g, grad),)


@op
class binary_cross_entropy:
    """-(t log p + (1 - t) log(1 - p)) for probabilities p in [0, 1]; each log is clamped
    at -100 as in PyTorch, so p = 0 or 1 gives a finite loss."""

    def forward(input, target, reduction="mean"):
        xp = get_namespace(input)
        log_p = xp.maximum(xp.log(xp.where(input > 0, input, 1.0)), -100.0)
        log_p = xp.where(input > 0, log_p, -100.0)
        q = 1.0 - input
        log_q = xp.where(q > 0, xp.maximum(xp.log(xp.where(q > 0, q, 1.0)), -100.0), -100.0)
        per = -(target * log_p + (1.0 - target) * log_q)
        # PyTorch's gradient: (p - t) / max(p (1 - p), 1e-12)
        g = (input - target) / xp.maximum(input * q, 1e-12) * _scale(reduction, per.size)
        # probabilities outside [0, 1] (NaN included) make the loss NaN, on the device
        return _poison(xp, ~xp.all((input >= 0) & (input <= 1)), _reduce(xp, per, per.size, reduction), g)

    def backward(g, grad=1.0):
        return (_times(g, grad),)


@op
class binary_cross_entropy_with_logits:
    """BCE of sigmoid(x), computed stably: max(x, 0) - x t + log(1 + exp(-|x|))."""

    def forward(input, target, reduction="mean"):
        xp = get_namespace(input)
        sigmoid, e = sigmoid_parts(xp, input)
        per = xp.maximum(input, 0.0) - input * target + xp.log1p(e)
        return _reduce(xp, per, per.size, reduction), (sigmoid - target) * _scale(reduction, per.size)

    def backward(g, grad=1.0):
        return (_times(g, grad),)


@op
class cross_entropy:
    """-log softmax(logits)[label]: logits (N, C), int labels (N,). Gradient softmax - target.

    ``label_smoothing`` ε trains against (1 - ε) one_hot + ε / C (PyTorch's meaning).
    """

    def forward(input, target, reduction="mean", label_smoothing=0.0):
        target_p = one_hot(target, input.shape[1], input.dtype)
        if label_smoothing:
            target_p = target_p * (1.0 - label_smoothing) + label_smoothing / input.shape[1]
        xp = get_namespace(input)
        shifted, exp, sum_exp = softmax_parts(xp, input, 1)
        log_p = shifted - xp.log(sum_exp)
        n = input.shape[0]
        g = (exp / sum_exp - target_p) * _scale(reduction, n)
        # a label outside the classes makes the loss NaN, on the device (no host read)
        return _poison(xp, _labels_outside(xp, target, input.shape[1]),
                       _reduce(xp, -(target_p * log_p), n, reduction), g)

    def backward(g, grad=1.0):
        return (_times(g, grad),)


@op
class nll_loss:
    """-input[label] for log-probabilities (N, C) (the output of log_softmax)."""

    def forward(input, target, reduction="mean"):
        target_p = one_hot(target, input.shape[1], input.dtype)
        n = input.shape[0]
        xp = get_namespace(input)
        return _poison(xp, _labels_outside(xp, target, input.shape[1]),
                       _reduce(xp, -(target_p * input), n, reduction), target_p * (-_scale(reduction, n)))

    def backward(g, grad=1.0):
        return (_times(g, grad),)


@op
class hinge_gan_loss:
    """The hinge loss of GANs (Lim & Ye, 2017; Miyato et al., 2018) on raw scores.
    ``role="discriminator"``: mean(relu(1 - s)) over real (target 1) and mean(relu(1 + s))
    over fake (target 0) scores, i.e. relu(1 - (2t - 1) s); ``role="generator"``: -mean(s),
    the target ignored. Its gradient is the sign where the margin is violated, else 0."""

    def forward(input, target, reduction="mean", role="discriminator"):
        xp = get_namespace(input)
        scale = _scale(reduction, input.size)
        if role == "generator":
            return _reduce(xp, -input, input.size, reduction), xp.full_like(input, -scale)
        sign = 2.0 * target - 1.0
        margin = 1.0 - sign * input
        per = xp.maximum(margin, 0.0)
        return _reduce(xp, per, input.size, reduction), -sign * xp.astype(margin > 0, input.dtype) * scale

    def backward(g, grad=1.0):
        return (_times(g, grad),)
