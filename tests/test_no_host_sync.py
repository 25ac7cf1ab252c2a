"""A training step never reads a value back from the device (issue 11's first part): under
``dlx.testing.no_host_sync()`` any such read on the strict device raises. The strict device
stands in for a GPU, where each read would make the host wait for the queue to drain."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import dlx
from dlx import nn, optim
from dlx.testing import no_host_sync

pytestmark = pytest.mark.skipif(importlib.util.find_spec("array_api_strict") is None,
                                reason="array-api-strict not installed")


@pytest.fixture
def dev():
    return dlx.device("strict")


def _x(dev, shape, seed=0):
    return dev.asarray(np.random.default_rng(seed).standard_normal(shape), dtype="float32")


def test_the_guard_catches_every_kind_of_read(dev):
    x = _x(dev, (3,))
    with no_host_sync():
        y = dev.xp.sum(x * 2.0)
        for read in (float, int, bool, dlx.to_numpy):
            with pytest.raises(dlx.HostSyncError, match="read back to the host"):
                read(y)
    assert np.isfinite(float(y))  # outside the block reads work again


def _steps_without_reads(model, opt, x, y, backward="backward_params", steps=2):
    """``steps`` training steps under the guard; the last loss, read afterwards."""
    loss_fn = nn.CrossEntropyLoss()
    with no_host_sync():
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            getattr(model, backward)(loss_fn.backward())
            opt.step()
            opt.zero_grad()
    return float(loss)


def test_lenet5_step_with_adam(dev):
    from dlx.models import LeNet5

    dlx.manual_seed(0)
    model = LeNet5(device=dev)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x, y = _x(dev, (4, 3, 32, 32)), dev.asarray(np.array([0, 3, 9, 1]))
    assert np.isfinite(_steps_without_reads(model, opt, x, y))


def test_dcgan_step_with_adam(dev):
    from dlx.models import DCGANDiscriminator, DCGANGenerator
    from dlx.training import gan_step

    dlx.manual_seed(0)
    g, d = DCGANGenerator(latent_dim=8, channels=4, device=dev), DCGANDiscriminator(channels=4, device=dev)
    g_opt, d_opt = optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)), optim.Adam(d.parameters(), 2e-4)
    real = dev.xp.tanh(_x(dev, (4, 1, 28, 28)))
    with no_host_sync():
        out = gan_step(g, d, real, _x(dev, (4, 8), 1), g_opt, d_opt)
    assert np.isfinite(float(out["d_loss"]))


def test_mlp_step_with_dropout_and_momentum(dev):
    from dlx.models import MLP

    dlx.manual_seed(0)
    model = MLP([6, 16, 3], dropout=0.3, device=dev)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _x(dev, (5, 6)), dev.asarray(np.array([0, 1, 2, 1, 0]))
    assert np.isfinite(_steps_without_reads(model, opt, x, y, backward="backward"))


def test_cumulative_batch_norm_step(dev):
    """BatchNorm with momentum=None averages over the batches seen: its factor comes from the
    counter on the device, not read back."""
    dlx.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, device=dev), nn.BatchNorm1d(4, momentum=None, device=dev),
                          nn.ReLU(), nn.Linear(4, 3, device=dev))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, y = _x(dev, (5, 6)), dev.asarray(np.array([0, 1, 2, 1, 0]))
    assert np.isfinite(_steps_without_reads(model, opt, x, y, steps=3))
    assert int(model[1].num_batches_tracked) == 3


def test_conditional_gan_step_with_hinge_and_spectral_norm(dev):
    from dlx.models import ConditionalDCGANDiscriminator, ConditionalDCGANGenerator
    from dlx.training import gan_step

    dlx.manual_seed(0)
    g = ConditionalDCGANGenerator(latent_dim=8, channels=4, device=dev)
    d = ConditionalDCGANDiscriminator(channels=4, spectral_norm=True, device=dev)
    g_opt, d_opt = optim.Adam(g.parameters(), 2e-4), optim.Adam(d.parameters(), 2e-4)
    real, labels = dev.xp.tanh(_x(dev, (4, 1, 28, 28))), dev.asarray(np.array([1, 7, 3, 0]))
    with no_host_sync():
        gan_step(g, d, real, _x(dev, (4, 8), 2), g_opt, d_opt, labels=labels, loss="hinge")


def test_infogan_step_with_codes(dev):
    from dlx.models import InfoDCGANDiscriminator, InfoDCGANGenerator
    from dlx.training import gan_step

    dlx.manual_seed(0)
    g = InfoDCGANGenerator(latent_dim=8, num_codes=3, channels=4, device=dev)
    d = InfoDCGANDiscriminator(num_codes=3, channels=4, spectral_norm=True, device=dev)
    g_opt, d_opt = optim.Adam(g.parameters(), 2e-4), optim.Adam(d.parameters(), 2e-4)
    real, codes = dev.xp.tanh(_x(dev, (4, 1, 28, 28))), dev.asarray(np.array([1, 2, 0, 0]))
    with no_host_sync():
        gan_step(g, d, real, _x(dev, (4, 8), 2), g_opt, d_opt, codes=codes, loss="hinge")


def test_the_cpu_device_cannot_guard():
    with pytest.raises(NotImplementedError, match="use the strict device"):
        with no_host_sync("cpu"):
            pass


def test_debug_checks_are_host_reads_and_the_guard_sees_them(dev, monkeypatch):
    """dlx.set_debug(True) puts the eager label check back: exactly the read the guard is for."""
    monkeypatch.setattr(dlx._checks, "_debug", True)
    loss_fn = nn.CrossEntropyLoss()
    with no_host_sync(), pytest.raises(dlx.HostSyncError):
        loss_fn(_x(dev, (2, 3)), dev.asarray(np.array([0, 2])))


def test_fit_reads_back_once_an_epoch_not_once_a_step(dev, monkeypatch):
    """Without a progress bar, an epoch's host reads do not grow with its steps."""
    from dlx.data import ArrayDataset, DataLoader
    from dlx.models import MLP

    reads = []
    real = type(dev.backend).to_numpy
    monkeypatch.setattr(type(dev.backend), "to_numpy", lambda self, x: reads.append(1) or real(self, x))
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.standard_normal((48, 1, 2, 3)).astype(np.float32), rng.integers(0, 3, 48))
    counts = []
    for batch in (24, 4):  # 2 steps an epoch, then 12
        dlx.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), MLP([6, 8, 3], device=dev))
        reads.clear()
        dlx.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
                DataLoader(data, batch, device=dev), epochs=1, progress=False)
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 4, counts
