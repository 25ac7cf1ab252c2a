"""Batch normalisation (Ioffe & Szegedy, 2015) and inverted dropout modules; the math is in
``dlx.nn.functional.normalization``.

BatchNorm1d normalises (N, C) or (N, C, L) per channel, BatchNorm2d (N, C, H, W).
Training uses the batch's mean and biased variance and updates running statistics
with the unbiased variance; eval mode uses the running statistics (PyTorch's rules).
"""

from __future__ import annotations

from dlx._device import get_namespace
from dlx.nn import functional as F
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

    def forward(self, x):
        check_input(self, x, self._ranks, self._layout, self.num_features)
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and x.size // self.num_features < 2:
            raise ValueError(f"{type(self).__name__}: training needs more than 1 value per "
                             f"channel, got input shape {tuple(x.shape)}")
        w, b = (self.weight.data, self.bias.data) if self.affine else (None, None)
        rm = getattr(self, "running_mean", None)
        rv = getattr(self, "running_var", None)
        y, ctx = F.batch_norm.forward(x, rm, rv, w, b, use_batch_stats, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(*ctx.aux)
        self._keep(ctx)
        return y

    def _update_running_stats(self, mean, var, count):
        # in place, as torch does: a step captured into a CUDA graph keeps these addresses
        self.num_batches_tracked[...] = self.num_batches_tracked + 1
        if self.momentum is None:  # cumulative moving average, 1 / batches seen (on the device)
            xp = get_namespace(mean)
            factor = 1.0 / xp.astype(self.num_batches_tracked, mean.dtype)
        else:
            factor = self.momentum
        new_mean, new_var = F.update_running_stats(
            self.running_mean, self.running_var, mean, var, count, factor)
        self.running_mean[...] = new_mean
        self.running_var[...] = new_var

    def backward(self, dy):
        ctx = self._pop()  # from batch_norm, or sync_batch_norm (SyncBatchNorm in a world > 1)
        dx, dw, db = ctx.op.backward(ctx, dy, need_params=self._grad_enabled)
        self._accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    _ranks = (4,)
    _layout = "(N, C, H, W)"


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch of a data-parallel
    run (``dlx.distributed``): mean and variance, and the sums of the backward pass, are
    reduced over every rank (PyTorch's ``nn.SyncBatchNorm``). In a world of one it is
    BatchNorm. Takes (N, C, *) inputs; ``SyncBatchNorm.convert_sync_batchnorm(model)``
    replaces a model's BatchNorm layers."""

    _ranks = (2, 3, 4, 5)
    _layout = "(N, C, *)"

    def forward(self, x):
        from dlx import distributed

        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or distributed.world_size() == 1:
            return super().forward(x)
        check_input(self, x, self._ranks, self._layout, self.num_features)
        w, b = (self.weight.data, self.bias.data) if self.affine else (None, None)
        y, ctx = F.sync_batch_norm.forward(x, w, b, self.eps, distributed.all_reduce)
        if self.training and self.track_running_stats:
            self._update_running_stats(*ctx.aux)
        self._keep(ctx)
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """``module`` with every BatchNorm1d/2d replaced by a SyncBatchNorm holding the same
        parameters and buffers (the module itself if it is one); returns the result."""
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, device=module.device, dtype=module.dtype)
            if module.affine:
                sync.weight, sync.bias = module.weight, module.bias
            for name, value in module._buffers.items():
                sync._buffers[name] = value
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            module._modules[name] = cls.convert_sync_batchnorm(child)
        return module


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
        y, ctx = F.dropout.forward(x, self.p, self.training)
        self._keep(ctx)
        return y

    def backward(self, dy):
        return F.dropout.backward(self._pop(), dy)[0]

    def extra_repr(self):
        return f"p={self.p}"
