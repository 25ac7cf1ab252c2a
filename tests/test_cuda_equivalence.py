"""End to end, CPU and CUDA compute the same thing: 200 training steps of LeNet-5 (CIFAR-10
shapes, batch 128, Adam) and 200 GAN steps of the DCGAN pair, from identical initial weights
and identical data (made on the host), give loss curves that agree to 1e-3 relative at
every step. Skipped where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_CUDA

import dlx
from dlx import nn, optim
from dlx.gan import DCGANDiscriminator, DCGANGenerator, gan_step
from dlx.models import LeNet5

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU (CuPy)")]

STEPS = 200
RTOL = 1e-3


def _same_start(make, device):
    """The model built on the CPU with seed 0, copied to ``device``."""
    dlx.manual_seed(0)
    cpu_model = make("cpu")
    other = make(device)
    other.load_state_dict(cpu_model.state_dict())
    return cpu_model, other


def _lenet_losses(model, batches):
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    dev = model.device
    out = []
    for x, y in batches:
        loss = loss_fn(model(dlx.asarray(x, device=dev)), dlx.asarray(y, device=dev))
        out.append(float(dlx.to_numpy(loss)))
        model.backward_params(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    return np.array(out)


def test_lenet5_200_steps_cpu_equals_cuda():
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((128, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 128))
               for _ in range(STEPS)]
    cpu_model, gpu_model = _same_start(lambda d: LeNet5(device=d), "cuda")
    a, b = _lenet_losses(cpu_model, batches), _lenet_losses(gpu_model, batches)
    rel = np.abs(a - b) / np.abs(a)
    assert rel.max() < RTOL, f"worst step {rel.argmax()}: cpu {a[rel.argmax()]} vs cuda {b[rel.argmax()]}"


def _gan_losses(g, d, reals, noises):
    dev = g.device
    g_opt = optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    out = []
    for real, z in zip(reals, noises):
        logs = gan_step(g, d, dlx.asarray(real, device=dev), dlx.asarray(z, device=dev), g_opt, d_opt)
        out.append((float(dlx.to_numpy(logs["d_loss"])), float(dlx.to_numpy(logs["g_loss"]))))
    return np.array(out)


def test_dcgan_200_steps_cpu_equals_cuda():
    rng = np.random.default_rng(1)
    reals = [rng.uniform(-1, 1, (32, 1, 28, 28)).astype(np.float32) for _ in range(STEPS)]
    noises = [rng.standard_normal((32, 100)).astype(np.float32) for _ in range(STEPS)]
    g_cpu, g_gpu = _same_start(lambda d: DCGANGenerator().to(d), "cuda")
    d_cpu, d_gpu = _same_start(lambda d: DCGANDiscriminator().to(d), "cuda")
    a, b = _gan_losses(g_cpu, d_cpu, reals, noises), _gan_losses(g_gpu, d_gpu, reals, noises)
    rel = np.abs(a - b) / np.abs(a)
    assert rel.max() < RTOL, f"worst step {np.unravel_index(rel.argmax(), rel.shape)}: max rel {rel.max()}"
