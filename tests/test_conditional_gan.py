"""The class-conditional DCGAN: shapes, gradients against central differences in float64,
the projection's meaning, and a few training steps."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import optim
from dlx.models import ConditionalDCGANDiscriminator, ConditionalDCGANGenerator
from dlx.testing import gradcheck


def _labels(dev, n, seed=0):
    return dev.asarray(np.random.default_rng(seed).integers(0, 10, n))


@pytest.mark.parametrize("sn", [False, True])
def test_shapes_and_backward(dev, sn):
    dlx.manual_seed(0)
    g = ConditionalDCGANGenerator(latent_dim=6, channels=4, device=dev)
    d = ConditionalDCGANDiscriminator(channels=4, spectral_norm=sn, device=dev)
    z = dev.asarray(np.random.default_rng(1).standard_normal((3, 6)), dtype="float32")
    y = _labels(dev, 3)
    fake = g(z, y)
    assert fake.shape == (3, 1, 28, 28)
    score = d(fake, y)
    assert score.shape == (3, 1)
    dfake = d.backward(dev.xp.ones_like(score))
    dz = g.backward(dfake)
    assert dz.shape == (3, 6)
    assert g.embed.weight.grad is not None and d.embed.parameters() is not None
    assert all(p.grad is not None for p in d.parameters())


@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_gradients_float64(sn):
    dlx.manual_seed(0)
    d = ConditionalDCGANDiscriminator(channels=2, spectral_norm=sn).double()
    if sn:
        d.eval()  # eval: spectral norm's u, v fixed, a fixed function to difference
    x = dlx.asarray(np.random.default_rng(2).standard_normal((2, 1, 28, 28)), dtype="float64")
    # only the input and the projection's parameters: a full check of 28x28 convs is slow
    for p in d.features.parameters():
        p.requires_grad = False
    # eps 1e-5, not the default 1e-6: at 1e-6 the loss's rounding (~3e-13) put the numeric
    # derivative 2.9e-7 off on an AMD EPYC VM (2026-12-01); at 1e-5 it agrees within 1e-8
    assert gradcheck(d, x, dlx.asarray(np.array([3, 7])), eps=1e-5, rtol=1e-4, atol=1e-7)


def test_generator_gradients_float64():
    dlx.manual_seed(0)
    g = ConditionalDCGANGenerator(latent_dim=3, embed_dim=2, channels=2).double()
    z = dlx.asarray(np.random.default_rng(3).standard_normal((2, 3)), dtype="float64")
    for p in g.body.parameters():
        p.requires_grad = False
    assert gradcheck(g, z, dlx.asarray(np.array([1, 4])), rtol=1e-4, atol=1e-7)


def test_projection_reads_the_label():
    """Same image, another label: only the embedding term changes, by <e_a - e_b, h>."""
    dlx.manual_seed(0)
    d = ConditionalDCGANDiscriminator(channels=2).eval()
    x = dlx.asarray(np.random.default_rng(4).standard_normal((1, 1, 28, 28)), dtype="float32")
    with dlx.no_grad():
        h = d.features(x)
        a, b = d(x, dlx.asarray(np.array([2]))), d(x, dlx.asarray(np.array([5])))
    e = dlx.to_numpy(d.embed.weight.data)
    np.testing.assert_allclose(dlx.to_numpy(a - b).ravel(), (dlx.to_numpy(h) @ (e[2] - e[5])).ravel(),
                               rtol=1e-4, atol=1e-5)


def test_the_discriminator_learns_to_tell_real_from_a_fixed_generator():
    """gan_step with labels and the hinge loss: with G held still (a tiny learning rate) the
    discriminator's loss falls within a few steps."""
    from dlx.training import gan_step

    dlx.manual_seed(0)
    g = ConditionalDCGANGenerator(latent_dim=8, channels=4)
    d = ConditionalDCGANDiscriminator(channels=4, spectral_norm=True)
    go, do = optim.SGD(g.parameters(), 1e-12), optim.Adam(d.parameters(), 1e-3, betas=(0.0, 0.9))
    rng = np.random.default_rng(5)
    real = dlx.asarray(np.tanh(rng.standard_normal((16, 1, 28, 28))), dtype="float32")
    y = dlx.asarray(rng.integers(0, 10, 16))
    losses = []
    for _ in range(10):
        z = dlx.asarray(rng.standard_normal((16, 8)), dtype="float32")
        out = gan_step(g, d, real, z, go, do, labels=y, loss="hinge")
        losses.append(float(out["d_loss"]))
    assert np.isfinite(losses).all() and max(losses[-3:]) < 0.8 * losses[0], losses
