"""Every loss: float64 gradient check, NumPy reference, PyTorch oracle; 0-d device output."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.testing import gradcheck, xp_assert_close

N, C = 6, 4


def _data(name, seed=0):
    """(input, target) host arrays for each loss, float64 inputs."""
    rng = np.random.default_rng(seed)
    if name in ("CrossEntropyLoss", "NLLLoss"):
        x = rng.standard_normal((N, C)) * 2
        if name == "NLLLoss":  # log-probabilities
            x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        return x, rng.integers(0, C, N)
    if name == "BCELoss":
        return rng.uniform(0.05, 0.95, (N, 3)), rng.uniform(0, 1, (N, 3))
    if name == "BCEWithLogitsLoss":
        return rng.standard_normal((N, 3)) * 3, rng.uniform(0, 1, (N, 3))
    return rng.standard_normal((N, 3)), rng.standard_normal((N, 3))


def ref_loss(name, x, t, reduction):
    if name == "MSELoss":
        per = (x - t) ** 2
    elif name == "BCELoss":
        per = -(t * np.log(x) + (1 - t) * np.log(1 - x))
    elif name == "BCEWithLogitsLoss":
        s = 1 / (1 + np.exp(-x))
        per = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    else:
        logp = x if name == "NLLLoss" else x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        per = -logp[np.arange(len(t)), t]
    return per.mean() if reduction == "mean" else per.sum()


LOSSES = ["MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss"]


def _put(x, t, dev, dtype):
    tdtype = None if t.dtype.kind == "i" else dtype
    return dlx.asarray(x, device=dev, dtype=dtype), dlx.asarray(t, device=dev, dtype=tdtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradcheck_and_reference(name, reduction, dev):
    x, t = _data(name)
    loss_fn = getattr(nn, name)(reduction=reduction)
    xd, td = _put(x, t, dev, "float64")
    value = loss_fn(xd, td)
    assert value.ndim == 0 and dev.owns(value)
    xp_assert_close(value, np.asarray(ref_loss(name, x, t, reduction)), rtol=1e-12, atol=1e-12)
    assert gradcheck(loss_fn, xd, td)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_float32_stays_float32(name, dev):
    x, t = _data(name)
    loss_fn = getattr(nn, name)()
    value = loss_fn(*_put(x, t, dev, "float32"))
    grad = loss_fn.backward()
    assert str(value.dtype).endswith("float32") and str(grad.dtype).endswith("float32")


@pytest.mark.torch
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_torch(name, reduction):
    torch = pytest.importorskip("torch")
    x, t = _data(name, seed=1)
    x32 = x.astype(np.float32)
    t_np = t if t.dtype.kind == "i" else t.astype(np.float32)
    loss_fn = getattr(nn, name)(reduction=reduction)
    value = loss_fn(*_put(x32, t_np, "cpu", "float32"))
    tx = torch.from_numpy(x32).requires_grad_(True)
    tv = getattr(torch.nn, name)(reduction=reduction)(tx, torch.from_numpy(t_np))
    tv.backward()
    xp_assert_close(value, tv.detach().numpy(), rtol=1e-4, atol=1e-5)
    xp_assert_close(loss_fn.backward(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_bce_saturates_like_torch():
    """p = 0 or 1 gives log clamped at -100 (finite), as in PyTorch."""
    loss_fn = nn.BCELoss(reduction="sum")
    x = dlx.asarray(np.array([0.0, 1.0, 0.5]))
    t = dlx.asarray(np.array([1.0, 0.0, 1.0]))
    v = float(dlx.to_numpy(loss_fn(x, t)))
    assert np.isclose(v, 200 + np.log(2), rtol=1e-6)
    assert np.all(np.isfinite(dlx.to_numpy(loss_fn.backward())))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_label_smoothing_gradcheck_and_reference(reduction, dev):
    x, t = _data("CrossEntropyLoss", seed=2)
    eps = 0.1
    loss_fn = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps)
    xd, td = _put(x, t, dev, "float64")
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    target = np.full((N, C), eps / C)
    target[np.arange(N), t] += 1 - eps
    per = -(target * logp).sum(axis=1)
    xp_assert_close(loss_fn(xd, td), np.asarray(per.mean() if reduction == "mean" else per.sum()),
                    rtol=1e-12, atol=1e-12)
    assert gradcheck(loss_fn, xd, td)


@pytest.mark.torch
def test_cross_entropy_label_smoothing_matches_torch():
    torch = pytest.importorskip("torch")
    x, t = _data("CrossEntropyLoss", seed=3)
    x32 = x.astype(np.float32)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)
    value = loss_fn(*_put(x32, t, "cpu", "float32"))
    tx = torch.from_numpy(x32).requires_grad_(True)
    tv = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(tx, torch.from_numpy(t))
    tv.backward()
    xp_assert_close(value, tv.detach().numpy(), rtol=1e-5, atol=1e-6)
    xp_assert_close(loss_fn.backward(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_cross_entropy_label_smoothing_out_of_range():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        nn.CrossEntropyLoss(label_smoothing=1.5)


def test_cross_entropy_is_stable_for_huge_logits():
    loss_fn = nn.CrossEntropyLoss()
    x = dlx.asarray(np.array([[1000.0, 0.0], [0.0, -1000.0]]))
    v = float(dlx.to_numpy(loss_fn(x, dlx.asarray(np.array([0, 1])))))
    assert np.isclose(v, 500.0) and np.all(np.isfinite(dlx.to_numpy(loss_fn.backward())))


def test_loss_backward_scales_by_upstream():
    loss_fn = nn.MSELoss()
    x, t = dlx.asarray(np.ones((2, 2)) * 3), dlx.asarray(np.ones((2, 2)))
    loss_fn(x, t)
    xp_assert_close(loss_fn.backward(0.5), np.full((2, 2), 0.5, np.float32))
