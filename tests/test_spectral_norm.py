"""nn.utils.spectral_norm beyond the op table (tests/test_modules.py checks it against
PyTorch and a NumPy reference): its largest singular value, the frozen discriminator of a
generator step, removal, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn


def _x(dev, shape, seed=0):
    return dev.asarray(np.random.default_rng(seed).standard_normal(shape), dtype="float32")


def test_power_iteration_finds_the_largest_singular_value(dev):
    dlx.manual_seed(0)
    m = nn.utils.spectral_norm(nn.Linear(6, 4)).to(dev)
    with dlx.no_grad():
        for _ in range(60):
            m(_x(dev, (2, 6)))
    s = np.linalg.svd(dlx.to_numpy(m.weight.data).astype(np.float64), compute_uv=False)
    assert abs(s[0] - 1.0) < 1e-4


def test_frozen_discriminator_passes_gradients_without_touching_its_own(dev):
    d = nn.Sequential(nn.utils.spectral_norm(nn.Linear(5, 4)), nn.LeakyReLU(0.2),
                      nn.utils.spectral_norm(nn.Linear(4, 1))).to(dev)
    d.requires_grad_(False)
    y = d(_x(dev, (3, 5)))
    dx = d.backward(dev.xp.ones_like(y))
    assert dx.shape == (3, 5)
    assert all(p.grad is None for p in d.parameters())


def test_second_backward_raises_and_state_dict_round_trips(dev, tmp_path):
    m = nn.utils.spectral_norm(nn.Conv2d(2, 3, 3)).to(dev)
    y = m(_x(dev, (2, 2, 5, 5)))
    m.backward(dev.xp.ones_like(y))
    with pytest.raises(RuntimeError, match="no forward call to go back through"):
        m.backward(dev.xp.ones_like(y))
    dlx.save(tmp_path / "sn.npz", m)
    other = nn.utils.spectral_norm(nn.Conv2d(2, 3, 3)).to(dev)
    dlx.load(tmp_path / "sn.npz", other)
    m.eval()
    other.eval()
    x = _x(dev, (1, 2, 5, 5), 3)
    np.testing.assert_array_equal(dlx.to_numpy(m(x)), dlx.to_numpy(other(x)))


def test_remove_spectral_norm_keeps_the_normalised_layer(dev):
    m = nn.utils.spectral_norm(nn.Linear(5, 3)).to(dev)
    m(_x(dev, (2, 5)))
    m.eval()
    x = _x(dev, (4, 5), 1)
    before = dlx.to_numpy(m(x))
    nn.utils.remove_spectral_norm(m)
    assert sorted(m.state_dict()) == ["bias", "weight"]
    np.testing.assert_allclose(dlx.to_numpy(m(x)), before, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="is not normalised"):
        nn.utils.remove_spectral_norm(m)


@pytest.mark.parametrize("make, kwargs, pattern", [
    (lambda: "a string", {}, "expected a Module"),
    (lambda: nn.ReLU(), {}, "has no parameter 'weight'"),
    (lambda: nn.utils.spectral_norm(nn.Linear(2, 2)), {}, "already normalised"),
    (lambda: nn.Linear(2, 2), {"n_power_iterations": 0}, "n_power_iterations must be >= 1"),
])
def test_bad_arguments(make, kwargs, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        nn.utils.spectral_norm(make(), **kwargs)
