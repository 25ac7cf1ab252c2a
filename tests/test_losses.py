"""Every loss, one row per (loss, reduction) in CASES: float64 gradient check, a NumPy
reference (the output is a 0-d array on the device), PyTorch as an oracle, the functional pair
(``dlx.nn.functional``) against the module, and float32 purity; on every device. The harness
is ``dlx.testing.opcase``."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.nn import functional as F
from dlx.testing import (
    Input,
    labels,
    log_probabilities,
    nn_case,
    normal,
    op_checks,
    uniform,
    xp_assert_close,
)

N, C = 6, 4


# ---- NumPy references: ref(module, state (empty), input, target) -> 0-d loss ---------------
def _reduce(m, per):
    return per.mean() if m.reduction == "mean" else per.sum()


def ref_mse(m, p, x, t):
    return _reduce(m, (x - t) ** 2)


def ref_bce(m, p, x, t):
    return _reduce(m, -(t * np.log(x) + (1 - t) * np.log(1 - x)))


def ref_bce_logits(m, p, x, t):
    s = 1 / (1 + np.exp(-x))
    return _reduce(m, -(t * np.log(s) + (1 - t) * np.log(1 - s)))


def ref_cross_entropy(m, p, x, t):
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    eps = m.label_smoothing
    target = np.full(x.shape, eps / x.shape[1])
    target[np.arange(len(t)), t] += 1 - eps
    return _reduce(m, -(target * logp).sum(axis=1))


def ref_nll(m, p, x, t):
    return _reduce(m, -x[np.arange(len(t)), t])


def ref_hinge(m, p, x, t):
    if m.role == "generator":
        return _reduce(m, -x)
    return _reduce(m, np.maximum(0.0, 1.0 - (2 * t - 1) * x))


def _off_the_hinges(rng, shape):
    """Scores at least 0.2 away from -1 and 1, where the hinge loss has its kinks."""
    bands = np.array([[-2.5, -1.2], [-0.8, 0.8], [1.2, 2.5]])
    lo, hi = bands[rng.integers(0, 3, shape)].transpose(-1, *range(len(shape)))
    return lo + (hi - lo) * rng.random(shape)


SCORES = Input((N, 3), _off_the_hinges)
REAL_OR_FAKE = Input((N, 3), lambda rng, s: rng.integers(0, 2, s).astype(np.float64))


# ---- the table -----------------------------------------------------------------------------
LOSSES = {  # class name -> (inputs (input, target), reference, functional pair)
    "MSELoss": ((normal((N, 3)), normal((N, 3))), ref_mse,
                lambda m, x, t: F.mse_loss.forward(x, t, m.reduction)),
    "BCELoss": ((uniform((N, 3), 0.05, 0.95), uniform((N, 3))), ref_bce,
                lambda m, x, t: F.binary_cross_entropy.forward(x, t, m.reduction)),
    "BCEWithLogitsLoss": ((normal((N, 3), scale=3), uniform((N, 3))), ref_bce_logits,
                          lambda m, x, t: F.binary_cross_entropy_with_logits.forward(x, t, m.reduction)),
    "CrossEntropyLoss": ((normal((N, C), scale=2), labels((N,), C)), ref_cross_entropy,
                         lambda m, x, t: F.cross_entropy.forward(x, t, m.reduction, m.label_smoothing)),
    "NLLLoss": ((log_probabilities((N, C)), labels((N,), C)), ref_nll,
                lambda m, x, t: F.nll_loss.forward(x, t, m.reduction)),
}
HINGE = ((SCORES, REAL_OR_FAKE), ref_hinge)
LOSS_TOL = {"float64": (1e-12, 1e-12)}


def loss_case(name, reduction, **kwargs):
    inputs, ref, functional = LOSSES[name]
    suffix = "".join(f"_{k}{v}" for k, v in kwargs.items())
    tol = dict(LOSS_TOL, float32=(1e-5, 1e-6)) if kwargs else LOSS_TOL
    return nn_case(f"{name}{suffix}-{reduction}", name, (), {"reduction": reduction, **kwargs},
                   inputs=inputs, ref=ref, functional=functional, tol=tol)


CASES = [loss_case(name, reduction) for name in LOSSES for reduction in ("mean", "sum")]
CASES += [loss_case("CrossEntropyLoss", reduction, label_smoothing=0.1) for reduction in ("mean", "sum")]
CASES += [loss_case("CrossEntropyLoss", "mean", label_smoothing=0.2)]
CASES += [nn_case(f"HingeGANLoss_{role}-{reduction}", "HingeGANLoss", (),
                  {"reduction": reduction, "role": role}, inputs=HINGE[0], ref=HINGE[1], torch=False,
                  tol=LOSS_TOL, functional=lambda m, x, t: F.hinge_gan_loss.forward(
                      x, t, m.reduction, m.role))
          for role in ("discriminator", "generator") for reduction in ("mean", "sum")]


@pytest.mark.parametrize("case, check", op_checks(CASES))
def test_loss(case, check, dev):
    """One test per (case, check, device): gradcheck, reference, torch, functional, float32."""
    check(case, dev)


# ---- what does not fit a row ---------------------------------------------------------------
def test_bce_saturates_like_torch():
    """p = 0 or 1 gives log clamped at -100 (finite), as in PyTorch."""
    loss_fn = nn.BCELoss(reduction="sum")
    x = dlx.asarray(np.array([0.0, 1.0, 0.5]))
    t = dlx.asarray(np.array([1.0, 0.0, 1.0]))
    v = float(dlx.to_numpy(loss_fn(x, t)))
    assert np.isclose(v, 200 + np.log(2), rtol=1e-6)
    assert np.all(np.isfinite(dlx.to_numpy(loss_fn.backward())))


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


def test_every_loss_has_rows():
    losses = {name for name in dir(nn) if name.endswith("Loss")}
    missing = losses - {type(c.module("cpu", "float32")).__name__ for c in CASES}
    assert not missing, f"losses without a row in CASES: {sorted(missing)}"
