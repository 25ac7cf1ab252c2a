"""Three small problems from the write-ups converge: XOR (MSE + tanh), the two-class circle
of radius 1/sqrt(2 pi) in [0,1]^2 (MSE + tanh output) and three-class two moons
(softmax + cross-entropy, mini-batch Adam)."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn, optim
from dlx.data.toy import circle, three_moons

pytestmark = pytest.mark.slow


def train(model, loss_fn, opt, x, y, epochs, batch_size=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(x)
    for _ in range(epochs):
        order = rng.permutation(n) if batch_size else np.arange(n)
        for start in range(0, n, batch_size or n):
            idx = order[start : start + (batch_size or n)]
            xb = dlx.asarray(x[idx], device=model.device)
            yb = dlx.asarray(y[idx], device=model.device)
            loss_fn(model(xb), yb)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()


def predict(model, x):
    model.eval()
    out = dlx.to_numpy(model(dlx.asarray(x, device=model.device)))
    model.train()
    return out


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_xor_mse_tanh(device):
    if device == "strict":
        pytest.importorskip("array_api_strict")
    dlx.manual_seed(0)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    y = np.array([[0], [1], [1], [0]], float)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Tanh()).to(device)
    train(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.2, momentum=0.9), x, y, 500)
    assert np.all(np.abs(predict(model, x) - y) < 0.1)


def test_circle_mse_tanh_output():
    dlx.manual_seed(0)
    x, y = circle(1000, seed=1)
    xt, yt = circle(1000, seed=2)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 1), nn.Tanh())
    train(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=0.01), x, y, 60, batch_size=32)
    acc = np.mean(np.sign(predict(model, xt)) == yt)
    assert acc >= 0.96, acc


def test_three_class_moons_softmax_cross_entropy():
    dlx.manual_seed(0)
    x, y = three_moons(1500, seed=1)
    xt, yt = three_moons(1500, seed=2)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    train(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), x, y, 30,
          batch_size=64)
    acc = np.mean(predict(model, xt).argmax(axis=1) == yt)
    assert acc >= 0.98, acc
