"""The functional core: every op as a pure pair, written once against ``xp`` and the
backend kernels. ``F.op.forward(...) -> (y, ctx)``, ``F.op.backward(ctx, dy) -> grads``
(a tuple, one per differentiable input), and ``F.op(...)`` the output alone::

    from dlx.nn import functional as F
    y, ctx = F.linear.forward(x, w, b)
    dx, dw, db = F.linear.backward(ctx, dy)

The modules in ``dlx.nn`` hold parameters and call these pairs; what backward needs
travels in the context of each call, never in a slot on the module. One file per family,
forward and backward side by side; ``_op.py`` says what an op is.
"""

from dlx._grad_mode import is_grad_enabled, no_grad
from dlx.nn.functional._op import Context, Op, op
from dlx.nn.functional.activation import (
    elu,
    leaky_relu,
    log_softmax,
    relu,
    selu,
    sigmoid,
    softmax,
    tanh,
)
from dlx.nn.functional.conv import conv2d, conv_transpose2d, conv_transpose2d_output_size
from dlx.nn.functional.linear import embedding, identity, linear, reshape
from dlx.nn.functional.loss import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    hinge_gan_loss,
    mse_loss,
    nll_loss,
    one_hot,
)
from dlx.nn.functional.normalization import (
    batch_norm,
    dropout,
    sync_batch_norm,
    update_running_stats,
)
from dlx.nn.functional.pooling import avg_pool2d, max_pool2d, upsample_nearest2d

__all__ = [
    "avg_pool2d", "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "Context", "conv2d", "conv_transpose2d", "conv_transpose2d_output_size", "cross_entropy",
    "dropout", "elu", "embedding", "hinge_gan_loss", "identity", "is_grad_enabled",
    "leaky_relu", "linear", "log_softmax", "max_pool2d", "mse_loss", "nll_loss", "no_grad",
    "one_hot", "Op", "op", "relu", "reshape", "selu", "sigmoid", "softmax", "sync_batch_norm",
    "tanh", "update_running_stats", "upsample_nearest2d",
]
