"""Per-call contexts: what backward needs belongs to the forward call that made it.

A second backward without a new forward is an error; a module called twice before backward
keeps both contexts (a stack: backward goes back through the calls in reverse order);
``dlx.no_grad()`` keeps nothing; a module keeps at most ``MAX_PENDING_CALLS`` contexts.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.nn import functional as F
from dlx.nn.module import MAX_PENDING_CALLS


def _x(dev, shape, seed=0):
    return dev.asarray(np.random.default_rng(seed).standard_normal(shape), dtype="float32")


def _layers(dev):
    return [
        (nn.Linear(3, 2, device=dev), (4, 3)),
        (nn.Conv2d(2, 3, 3, device=dev), (2, 2, 5, 5)),
        (nn.ConvTranspose2d(2, 3, 3, stride=2, device=dev), (2, 2, 4, 4)),
        (nn.BatchNorm2d(2, device=dev), (3, 2, 4, 4)),
        (nn.Tanh(), (4, 3)),
        (nn.MaxPool2d(2), (2, 2, 4, 4)),
        (nn.Flatten(), (2, 2, 4, 4)),
        (nn.Sequential(nn.Linear(3, 4, device=dev), nn.ReLU(), nn.Linear(4, 2, device=dev)), (4, 3)),
    ]


def test_second_backward_without_forward_raises(dev):
    for m, shape in _layers(dev):
        y = m(_x(dev, shape))
        dy = dev.xp.ones_like(y)
        m.backward(dy)
        grads = [None if p.grad is None else dlx.to_numpy(p.grad).copy() for p in m.parameters()]
        with pytest.raises(RuntimeError, match="no forward call to go back through"):
            m.backward(dy)
        # the failed second backward added nothing
        for p, g in zip(m.parameters(), grads):
            np.testing.assert_array_equal(dlx.to_numpy(p.grad), g)


def test_loss_second_backward_raises(dev):
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(_x(dev, (4, 3)), dev.asarray(np.array([0, 2, 1, 0])))
    loss_fn.backward()
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward"):
        loss_fn.backward()


def test_called_twice_keeps_both_contexts(dev):
    """Two calls, then two backwards: the latest call first, each with its own input."""
    m = nn.Linear(3, 2, device=dev)
    xa, xb = _x(dev, (4, 3), 1), _x(dev, (4, 3), 2)
    ya, _ = m(xa), m(xb)
    assert m.pending_calls == 2
    dy = dev.xp.ones_like(ya)
    m.backward(dy)  # goes back through the call on xb
    np.testing.assert_allclose(dlx.to_numpy(m.weight.grad), dlx.to_numpy(dev.xp.matmul(dy.T, xb)),
                               rtol=1e-6)
    m.backward(dy)  # then through the call on xa: the sum of both
    np.testing.assert_allclose(dlx.to_numpy(m.weight.grad),
                               dlx.to_numpy(dev.xp.matmul(dy.T, xa + xb)), rtol=1e-5, atol=1e-6)
    assert m.pending_calls == 0
    with pytest.raises(RuntimeError, match="no forward call"):
        m.backward(dy)


def test_discriminator_on_two_batches_equals_one_concatenated(dev):
    """D(real), D(fake), then both backwards in reverse order: the parameter gradients of
    one pass over the concatenated batch (no batch statistics involved)."""
    dlx.manual_seed(0)
    d = nn.Sequential(nn.Linear(5, 4, device=dev), nn.LeakyReLU(0.2), nn.Linear(4, 1, device=dev))
    real, fake = _x(dev, (3, 5), 3), _x(dev, (3, 5), 4)
    yr, yf = d(real), d(fake)
    d.backward(dev.xp.ones_like(yf))
    d.backward(dev.xp.ones_like(yr) * 2.0)
    two = [dlx.to_numpy(p.grad).copy() for p in d.parameters()]
    d.zero_grad()
    both = dev.xp.concat([real, fake])
    d(both)
    d.backward(dev.xp.concat([dev.xp.ones_like(yr) * 2.0, dev.xp.ones_like(yf)]))
    for g2, g1 in zip(two, (dlx.to_numpy(p.grad) for p in d.parameters())):
        np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-6)


def test_no_grad_keeps_nothing(dev):
    m = nn.Sequential(nn.Linear(3, 2, device=dev), nn.ReLU())
    with dlx.no_grad():
        assert not dlx.is_grad_enabled()
        for _ in range(3):
            m(_x(dev, (4, 3)))
    assert dlx.is_grad_enabled()
    assert all(c.pending_calls == 0 for c in m.modules())
    with pytest.raises(RuntimeError, match="no forward call"):
        m.backward(dev.xp.ones((4, 2), dtype=dev.xp.float32, device=dev.array_device))


def test_pending_contexts_are_bounded(dev):
    """Calls that never get a backward (inference outside no_grad) keep at most
    MAX_PENDING_CALLS contexts; backward still goes through the latest ones."""
    m = nn.Linear(3, 2, device=dev)
    xs = [_x(dev, (2, 3), i) for i in range(MAX_PENDING_CALLS + 5)]
    for x in xs:
        m(x)
    assert m.pending_calls == MAX_PENDING_CALLS
    dy = dev.xp.ones((2, 2), dtype=dev.xp.float32, device=dev.array_device)
    m.backward(dy)
    np.testing.assert_allclose(dlx.to_numpy(m.weight.grad), dlx.to_numpy(dev.xp.matmul(dy.T, xs[-1])),
                               rtol=1e-6)
    for _ in range(MAX_PENDING_CALLS - 1):
        m.backward(dy)
    with pytest.raises(RuntimeError, match=f"keeps the latest {MAX_PENDING_CALLS}"):
        m.backward(dy)


def test_to_and_release_drop_pending_contexts():
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    m(_x(dlx.device("cpu"), (2, 3)))
    m.release()
    assert all(c.pending_calls == 0 for c in m.modules())
    m(_x(dlx.device("cpu"), (2, 3)))
    m.to("float64")
    assert all(c.pending_calls == 0 for c in m.modules())


def test_functional_context_is_consumed(dev):
    x, w = _x(dev, (4, 3)), _x(dev, (2, 3), 1)
    y, ctx = F.linear.forward(x, w)
    assert F.linear(x, w).shape == y.shape
    dx, dw, db = F.linear.backward(ctx, dev.xp.ones_like(y))
    assert db is None and dx.shape == x.shape and dw.shape == w.shape
    with pytest.raises(RuntimeError, match="already used by a backward"):
        F.linear.backward(ctx, dev.xp.ones_like(y))
    _, ctx2 = F.relu.forward(x)
    with pytest.raises(TypeError, match="expected a context from linear.forward"):
        F.linear.backward(ctx2, dev.xp.ones_like(y))
