"""The fused Adam kernel of the CUDA backend (optim.cu's adam_group) on the CPU emulation
(tests/cuda_emulation.py): a whole parameter group per launch, its step counts and learning
rate read from device memory, bit for bit what dlx.optim.Adam's xp code computes on the CPU."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import dlx
from dlx import optim


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,), (2, 3, 2)]
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    return p0, grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1},
                                {"weight_decay": 0.1, "decoupled_weight_decay": True},
                                {"lr": 0.05, "betas": (0.5, 0.99), "eps": 1e-6}])
def test_emulated_adam_group_is_the_xp_code(emu, dtype, kw):
    optim_cuda = importlib.import_module("dlx.backends.cuda.optim")
    import cupy  # the emulator's stand-in

    p0, grads = _problem(dtype)
    params = [dlx.nn.Parameter(dlx.asarray(p, device="cpu", dtype=dtype)) for p in p0]
    opt = optim.Adam(params, **kw)
    lrs = [kw.get("lr", 1e-3), 0.02, 0.02, 0.007]  # a scheduler's changes between steps

    dp = [cupy.asarray(p) for p in p0]
    m = [cupy.zeros(p.shape, dtype) for p in p0]
    v = [cupy.zeros(p.shape, dtype) for p in p0]
    steps = cupy.zeros((3,), np.float64)
    lr = cupy.zeros((), np.float64)
    beta1, beta2 = kw.get("betas", (0.9, 0.999))
    for t, gs in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        for p, g in zip(params, gs):
            p.grad = dlx.asarray(g, device="cpu", dtype=dtype)
        opt.step()

        lr[...] = lrs[t]
        steps += 1
        entries = [2, 0, 1]  # any entries of the step vector
        steps_view = cupy.asarray(np.zeros(3))
        steps_view[entries] = steps
        optim_cuda.adam_step(dp, [cupy.asarray(g) for g in gs], m, v, steps_view, entries, lr,
                             beta1=beta1, beta2=beta2, eps=kw.get("eps", 1e-8),
                             weight_decay=kw.get("weight_decay", 0.0),
                             decoupled=kw.get("decoupled_weight_decay", False))
        for i, p in enumerate(params):
            if dtype == "float32":  # bit for bit
                np.testing.assert_array_equal(np.asarray(dp[i]), dlx.to_numpy(p.data),
                                              err_msg=f"param {i} after step {t + 1}")
            else:
                # the bias corrections' beta**t: the kernel calls the C library's pow here (and
                # CUDA's on a GPU, as CuPy does), NumPy its own SIMD pow, which can differ in
                # the last bit of a float64 (never, over 100,000 steps, once rounded to float32)
                np.testing.assert_allclose(np.asarray(dp[i]), dlx.to_numpy(p.data), rtol=1e-14,
                                           atol=1e-15, err_msg=f"param {i} after step {t + 1}")
            np.testing.assert_array_equal(np.asarray(m[i]), dlx.to_numpy(opt.state[p]["exp_avg"]))


def test_emulated_adam_group_refuses_float32_counts(emu):
    optim_cuda = importlib.import_module("dlx.backends.cuda.optim")
    import cupy

    p = cupy.zeros((2,), np.float32)
    with pytest.raises(ValueError, match="steps and lr must be float64"):
        optim_cuda.adam_step([p], [p], [p], [p], cupy.zeros((1,), np.float32), [0],
                             cupy.zeros((), np.float64), beta1=0.9, beta2=0.999, eps=1e-8,
                             weight_decay=0.0, decoupled=False)
