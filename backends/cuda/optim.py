"""Fused optimizer updates on the GPU: the launcher of ``adam_step`` in optim.cu.

``dlx.optim.Adam`` calls ``device.backend.adam_step`` where a backend offers it (this one
does, unless ``DLX_CUDA_FUSED=0``) and otherwise runs its own xp code; both give the same
bits (tests/test_optim.py checks it on the GPU).
"""

from __future__ import annotations

import cupy
import numpy as np

from . import kernels as K

FAMILY = "optim"
DECAY_MODES = {None: 0, "coupled": 1, "decoupled": 2}


def adam_step(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """One Adam (``decoupled=False``) or AdamW step, in place on ``p``, ``exp_avg`` and
    ``exp_avg_sq``; ``step`` is the 1-based step count after this update."""
    op = "adam_step"
    dtype, dev = K.check_float_arrays(op, p=p, grad=g, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    for name, a in (("grad", g), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if a.shape != p.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, the parameter {tuple(p.shape)}")
    n = p.size
    if n == 0:
        return
    mode = DECAY_MODES[None if weight_decay == 0 else ("decoupled" if decoupled else "coupled")]
    # the scalars exactly as dlx/optim/adam.py computes them (Python floats), then rounded once
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    r = lambda v: K.real(dtype, v)  # noqa: E731
    args = (p, g, exp_avg, exp_avg_sq, np.int64(n), *K.i32(mode), r(weight_decay),
            r(1 - lr * weight_decay), r(1 - beta1), r(beta2), r(1 - beta2),
            r(bias_correction2_sqrt), r(eps), r(step_size))
    with cupy.cuda.Device(dev):
        K.run(FAMILY, op, dtype, K.grid_1d(n, dev), (K.BLOCK, 1, 1), args)
