"""Bad input raises at the layer that sees it, with a message naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn


def x_(shape, dtype="float32", device="cpu"):
    return dlx.asarray(np.random.default_rng(0).standard_normal(shape), device=device, dtype=dtype)


@pytest.mark.parametrize("module, shape, pattern", [
    (lambda: nn.Linear(4, 2), (3, 5), r"Linear: expected 4 channels in dim -1"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 3, 8), r"Conv2d: expected input of shape \(N, C, H, W\)"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 1, 8, 8), r"Conv2d: expected 3 channels .* got 1"),
    (lambda: nn.Conv2d(1, 1, 5), (1, 1, 3, 3), r"smaller than the kernel"),
    (lambda: nn.MaxPool2d(2), (2, 3), r"MaxPool2d: expected input of shape \(N, C, H, W\)"),
    (lambda: nn.BatchNorm2d(3), (2, 4, 5, 5), r"BatchNorm2d: expected 3 channels"),
    (lambda: nn.BatchNorm1d(3), (1, 3), r"more than 1 value per channel"),
    (lambda: nn.ConvTranspose2d(2, 2, 3), (1, 3, 4, 4), r"ConvTranspose2d: expected 2 channels"),
])
def test_wrong_shape(module, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        module()(x_(shape))


def test_wrong_dtype():
    with pytest.raises(ValueError, match=r"Linear: input has dtype float64 but the parameters are float32"):
        nn.Linear(2, 2)(x_((1, 2), dtype="float64"))
    with pytest.raises(ValueError, match=r"ReLU: input has dtype int64; expected float32 or float64"):
        nn.ReLU()(dlx.asarray(np.arange(3)))
    with pytest.raises(TypeError, match=r"Linear: input must be an array, got list"):
        nn.Linear(2, 2)([[1.0, 2.0]])


def test_mixed_devices():
    pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError,
                       match=r"input is on device 'strict' but the module's parameters are on 'cpu'"):
        nn.Linear(2, 2)(x_((1, 2), device="strict"))
    loss = nn.MSELoss()
    with pytest.raises(ValueError, match=r"target is on device 'strict' but input is on 'cpu'"):
        loss(x_((2, 2)), x_((2, 2), device="strict"))


def test_backward_before_forward():
    for m in (nn.Linear(2, 2), nn.ReLU(), nn.Conv2d(1, 1, 1), nn.MSELoss(), nn.Dropout(),
              nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2))):
        with pytest.raises(RuntimeError, match=r"backward\(\) has no forward call to go back through"):
            m.backward(x_((2, 2)))


@pytest.mark.parametrize("debug", [False, True])
def test_invalid_values_are_a_nan_loss_or_with_debug_an_error(dev, debug, monkeypatch):
    """A label outside the classes or a BCE input outside [0, 1]: by default the loss and its
    gradient become NaN on the device (no host read, so no step waits; fit reports the NaN);
    with dlx.set_debug(True) the loss checks eagerly and says what is wrong."""
    monkeypatch.setattr(dlx._checks, "_debug", False)
    dlx.set_debug(debug)
    x = dev.asarray(np.zeros((3, 4)), dtype="float32")
    cases = [(nn.CrossEntropyLoss(), x, dev.asarray(np.array([0, 4, 1])), r"outside \[0, 3\]"),
             (nn.NLLLoss(), x, dev.asarray(np.array([-1, 0, 1])), r"outside \[0, 3\]"),
             (nn.BCELoss(), x + 5, x, r"probabilities in \[0, 1\]")]
    for loss_fn, inp, target, pattern in cases:
        if debug:
            with pytest.raises(ValueError, match=pattern):
                loss_fn(inp, target)
            continue
        loss = loss_fn(inp, target)
        assert np.isnan(dlx.to_numpy(loss)) and np.isnan(dlx.to_numpy(loss_fn.backward())).all()
    if not debug:  # valid values stay exact (the where() picks them unchanged)
        ce = nn.CrossEntropyLoss()
        assert np.isfinite(dlx.to_numpy(ce(x, dev.asarray(np.array([0, 3, 1])))))


def test_loss_target_problems():
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"target must hold integer class indices"):
        ce(x_((3, 4)), x_((3,)))
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\)"):
        ce(x_((3, 4)), dlx.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"target shape \(2, 3\) differs from input shape \(2, 2\)"):
        nn.MSELoss()(x_((2, 2)), x_((2, 3)))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        nn.MSELoss(reduction="avg")


@pytest.mark.parametrize("factory, pattern", [
    (lambda: nn.Conv2d(3, 4, 0), r"kernel_size must be >= 1"),
    (lambda: nn.Conv2d(3, 4, 3, stride=(1, 2, 3)), r"stride must be an int or a pair"),
    (lambda: nn.MaxPool2d(2, padding=2), r"padding .* at most half the kernel"),
    (lambda: nn.Dropout(1.5), r"p must be between 0 and 1"),
    (lambda: nn.Upsample(scale_factor=1.5), r"positive integer"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), r"output_padding"),
    (lambda: nn.Linear(0, 3), r"sizes must be positive"),
])
def test_bad_constructor_arguments(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()
