"""state_dict / load_state_dict, requires_grad_, to(), train/eval and Sequential plumbing."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.testing import xp_assert_close


def small_cnn(device=None):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, device=device), nn.BatchNorm2d(4, device=device), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, device=device),
    )


def test_state_dict_names_match_pytorch():
    m = small_cnn()
    assert list(m.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "5.weight", "5.bias",
    ]
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                    "5.weight", "5.bias"]


def test_round_trip_between_models(dev):
    a, b = small_cnn(dev), small_cnn(dev)
    dlx.manual_seed(1)
    x = dlx.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), device=dev)
    a(x)  # updates running stats
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert missing == [] and unexpected == []
    a.eval(), b.eval()
    xp_assert_close(b(x), a(x), rtol=0, atol=0)
    # loaded arrays are copies, not aliases
    a.state_dict()["0.weight"][...] = 0
    assert float(dlx.to_numpy(b.state_dict()["0.weight"]).std()) > 0


def test_load_accepts_numpy_and_other_devices():
    pytest.importorskip("array_api_strict")
    a = small_cnn("cpu")
    host = {k: dlx.to_numpy(v) for k, v in a.state_dict().items()}
    b = small_cnn("strict")
    b.load_state_dict(host)
    assert b.device == dlx.device("strict")
    xp_assert_close(b.state_dict()["5.weight"], host["5.weight"], rtol=0, atol=0)


def test_load_lists_every_problem_and_loads_nothing():
    a = small_cnn()
    sd = {k: dlx.to_numpy(v) for k, v in a.state_dict().items()}
    del sd["0.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["5.weight"] = np.zeros((3, 5), np.float32)
    b = small_cnn()
    before = dlx.to_numpy(b.state_dict()["0.weight"]).copy()
    with pytest.raises(ValueError) as err:
        b.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys: 0.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "5.weight: checkpoint has shape (3, 5), model has (3, 64)" in msg
    assert "nothing was loaded" in msg
    np.testing.assert_array_equal(dlx.to_numpy(b.state_dict()["0.weight"]), before)
    with pytest.raises(ValueError, match="shape mismatches"):
        b.load_state_dict(sd, strict=False)
    sd["5.weight"] = np.zeros((3, 64), np.float32)
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["0.bias"] and unexpected == ["extra.weight"]


def test_requires_grad_false_still_returns_dx():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m.requires_grad_(False)
    x = dlx.asarray(np.ones((5, 3)))
    y = m(x)
    dx = m.backward(dlx.asarray(np.ones(tuple(y.shape))))
    assert dx.shape == (5, 3)
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(True)
    m(x)
    m.backward(dlx.asarray(np.ones((5, 2))))
    assert all(p.grad is not None for p in m.parameters())


def test_gradients_accumulate_and_zero_grad():
    m = nn.Linear(3, 2)
    x = dlx.asarray(np.ones((4, 3)))
    m(x)
    m.backward(dlx.asarray(np.ones((4, 2))))
    g1 = dlx.to_numpy(m.weight.grad).copy()
    m(x)
    m.backward(dlx.asarray(np.ones((4, 2))))
    np.testing.assert_allclose(dlx.to_numpy(m.weight.grad), 2 * g1)
    m.zero_grad()
    assert m.weight.grad is None


def test_to_moves_and_casts(dev):
    m = small_cnn("cpu").to(dev)
    assert all(dev.owns(p.data) for p in m.parameters())
    assert all(dev.owns(b) for b in m.buffers())
    m.double()
    assert m.dtype == "float64" and "int64" in str(m.state_dict()["1.num_batches_tracked"].dtype)
    m.to("float32")
    assert m.dtype == "float32"


def test_train_eval_propagates():
    m = small_cnn()
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_sequential_indexing_and_repr():
    m = small_cnn()
    assert len(m) == 6 and isinstance(m[0], nn.Conv2d) and len(m[1:3]) == 2
    assert "Conv2d(1, 4, kernel_size=(3, 3)" in repr(m)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), 3)


def test_backward_without_input_grad_gives_the_same_parameter_grads(dev):
    """fit's backward(dy, input_grad=False): the first layer skips dx, grads are unchanged."""
    x = dlx.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), device=dev)
    grads = []
    for input_grad in (True, False):
        dlx.manual_seed(0)
        m = small_cnn(dev)
        y = m(x)
        dx = m.backward(dlx.asarray(np.ones(tuple(y.shape)), device=dev), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([dlx.to_numpy(p.grad) for p in m.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    relu_first = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))  # cannot skip: returns dx anyway
    relu_first(dlx.asarray(np.ones((4, 3))))
    assert relu_first.backward(dlx.asarray(np.ones((4, 2))), input_grad=False).shape == (4, 3)
