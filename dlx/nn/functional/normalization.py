"""Batch normalisation (Ioffe & Szegedy, 2015) and inverted dropout.

batch_norm normalises x (N, C, *) per channel: with the batch's mean and biased variance
(training, or no running statistics), else with the given running statistics. A backend may
run the same formulas as one fused kernel (``Backend.batch_norm_forward``: the CPU backend's
Numba kernels in backends/cpu/normalization.py); the xp code below is the definition, and
what every other device runs.
"""

from __future__ import annotations

from dlx._device import device_of, get_namespace
from dlx._random import generator
from dlx.nn.functional._op import op


@op
class batch_norm:
    """(x - mean) / sqrt(var + eps) * weight + bias, per channel of x (N, C, *).

    ``batch_stats`` True normalises with the batch's statistics and returns them in
    ``ctx.aux`` as (mean, biased var, values per channel), for the running averages; False
    uses ``running_mean`` and ``running_var``. ``weight``/``bias`` None: no affine part.
    backward(ctx, dy, need_params=True) -> (dx, dweight, dbias).
    """

    def forward(x, running_mean, running_var, weight=None, bias=None, batch_stats=True, eps=1e-5):
        backend = device_of(x).backend
        fused = backend.batch_norm_forward(x, running_mean, running_var, weight, bias,
                                           batch_stats, eps)
        if fused is not None:  # the same formulas in one kernel (the CPU backend's Numba)
            y, saved, aux = fused
            return y, (backend, saved), aux
        xp = get_namespace(x)
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        aux = None
        if batch_stats:
            mean = xp.mean(x, axis=axes, keepdims=True)
            xc = x - mean
            var = xp.mean(xc * xc, axis=axes, keepdims=True)
            aux = (xp.reshape(mean, (c,)), xp.reshape(var, (c,)), x.size // c)
        else:
            mean = xp.reshape(running_mean, bshape)
            var = xp.reshape(running_var, bshape)
            xc = x - mean
        invstd = 1.0 / xp.sqrt(var + eps)
        xhat = xc * invstd
        y = xhat if weight is None else xhat * xp.reshape(weight, bshape) + xp.reshape(bias, bshape)
        return y, (xhat, invstd, batch_stats, axes, bshape, weight), aux

    def backward(saved, dy, need_params=True):
        if len(saved) == 2:  # from the backend's fused forward
            backend, fused = saved
            return backend.batch_norm_backward(fused, dy, need_params)
        xhat, invstd, batch_stats, axes, bshape, weight = saved
        xp = get_namespace(dy)
        dw = db = None
        if weight is not None:
            if need_params:
                dw = xp.sum(dy * xhat, axis=axes)
                db = xp.sum(dy, axis=axes)
            dxhat = dy * xp.reshape(weight, bshape)
        else:
            dxhat = dy
        if not batch_stats:
            return dxhat * invstd, dw, db
        # d/dx of (x - mean) / std, with mean and std functions of the whole batch:
        dx = invstd * (dxhat - xp.mean(dxhat, axis=axes, keepdims=True)
                       - xhat * xp.mean(dxhat * xhat, axis=axes, keepdims=True))
        return dx, dw, db


@op
class sync_batch_norm:
    """batch_norm with the batch statistics, and the sums its backward needs, taken over every
    rank of a data-parallel world: ``all_reduce(a)`` returns the sum of ``a`` over the ranks
    (two packed reductions forward, one backward). ``ctx.aux`` is (mean, biased var, count)
    of the global batch. backward(ctx, dy, need_params=True) -> (dx, dweight, dbias), the
    parameter gradients summed over this rank's part only (``allreduce_gradients`` adds the
    ranks). Equal to batch_norm over the concatenated batch when the ranks' parts are equal.
    """

    def forward(x, weight, bias, eps, all_reduce):
        xp = get_namespace(x)
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        local = xp.full((1,), x.size // c, dtype=x.dtype, device=x.device)
        sums = all_reduce(xp.concat([xp.sum(x, axis=axes), local]))
        count = sums[c]
        mean = xp.reshape(sums[:c] / count, bshape)
        xc = x - mean
        var = xp.reshape(all_reduce(xp.sum(xc * xc, axis=axes)) / count, bshape)
        invstd = 1.0 / xp.sqrt(var + eps)
        xhat = xc * invstd
        y = xhat if weight is None else xhat * xp.reshape(weight, bshape) + xp.reshape(bias, bshape)
        aux = (xp.reshape(mean, (c,)), xp.reshape(var, (c,)), count)
        return y, (xhat, invstd, axes, bshape, weight, count, all_reduce), aux

    def backward(saved, dy, need_params=True):
        xhat, invstd, axes, bshape, weight, count, all_reduce = saved
        xp = get_namespace(dy)
        c = xhat.shape[1]
        dw = db = None
        if weight is not None and need_params:
            dw = xp.sum(dy * xhat, axis=axes)
            db = xp.sum(dy, axis=axes)
        dxhat = dy if weight is None else dy * xp.reshape(weight, bshape)
        sums = all_reduce(xp.concat([xp.sum(dxhat, axis=axes), xp.sum(dxhat * xhat, axis=axes)]))
        mean_dxhat = xp.reshape(sums[:c] / count, bshape)
        mean_dxhat_xhat = xp.reshape(sums[c:] / count, bshape)
        return invstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat), dw, db


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count, factor):
    """The new (running_mean, running_var): moved by ``factor`` towards the batch's mean and
    unbiased variance (PyTorch's rule)."""
    unbiased = batch_var * (count / (count - 1))
    return ((1 - factor) * running_mean + factor * batch_mean,
            (1 - factor) * running_var + factor * unbiased)


@op
class dropout:
    """Inverted dropout: in training, zero each element with probability p and scale the
    rest by 1 / (1 - p), so eval mode is the identity. The mask comes from the device's
    dlx generator (``dlx.manual_seed`` seeds it)."""

    def forward(x, p=0.5, training=True):
        if not training or p == 0.0:
            return x, None
        xp = get_namespace(x)
        if p == 1.0:
            mask = xp.zeros_like(x)
        else:
            u = generator(device_of(x)).uniform(x.shape, dtype=x.dtype)
            mask = xp.astype(u >= p, x.dtype) * (1.0 / (1.0 - p))
        return x * mask, mask

    def backward(mask, dy):
        return (dy if mask is None else dy * mask,)
