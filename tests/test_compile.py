"""``dlx.compile_step`` and the step it compiles (issue 11's whole-step capture).

On cpu and strict a compiled step runs eagerly: these tests check the contract every device
shares (the step reads nothing back, accumulates in place, follows a scheduler, counts
steps on the device). On a GPU (cuda-marked), the captured graph's replays must equal
eager steps run with the same kernels, bit for bit, over a few hundred steps."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import HAS_CUDA

import dlx
from dlx import nn, optim
from dlx.models import LeNet5
from dlx.testing import no_host_sync

HAS_STRICT = importlib.util.find_spec("array_api_strict") is not None


def _batches(dev, n_batches, batch=8, last=None, seed=0):
    """Random CIFAR-shaped batches on ``dev`` (the last one shorter when ``last``)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        n = last if (last and b == n_batches - 1) else batch
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, n)
        out.append((dev.asarray(x, dtype="float32"), dev.asarray(y)))
    return out


def _lenet_step(dev, dropout=False, sgd=False):
    """(model, optimizer, step function, running loss sum) of a LeNet-5 training step."""
    dlx.manual_seed(0)
    model = LeNet5(device=dev)
    if dropout:  # a random mask inside the step: the device's stream must move on per replay
        model = nn.Sequential(model, nn.Dropout(0.3))
    opt = (optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if sgd
           else optim.Adam(model.parameters(), lr=1e-3))
    loss_fn = nn.CrossEntropyLoss()
    total = dev.xp.zeros((), dtype=dev.xp.float64, device=dev.array_device)

    def step(x, y):
        loss = loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        total[...] = total + dev.xp.astype(loss, dev.xp.float64)

    return model, opt, step, total


def _weights(model):
    return {k: dlx.to_numpy(v) for k, v in model.state_dict().items()}


def test_compiled_step_is_the_step_on_the_cpu():
    dev = dlx.device("cpu")
    batches = _batches(dev, 4, last=5)
    m1, _, s1, t1 = _lenet_step(dev)
    for x, y in batches:
        s1(x, y)
    m2, _, s2, t2 = _lenet_step(dev)
    compiled = dlx.compile_step(s2)
    for x, y in batches:
        compiled(x, y)
    assert compiled.graphs == 0  # the cpu device captures nothing
    assert float(dlx.to_numpy(t1)) == float(dlx.to_numpy(t2))
    for k, v in _weights(m1).items():
        np.testing.assert_array_equal(v, _weights(m2)[k], err_msg=k)


def test_compile_step_takes_device_arrays_only():
    step = dlx.compile_step(lambda x: None)
    with pytest.raises(TypeError, match="device arrays only"):
        step(np.zeros(2).tolist())
    with pytest.raises(TypeError, match="callable"):
        dlx.compile_step(3)


@pytest.mark.skipif(not HAS_STRICT, reason="array-api-strict not installed")
@pytest.mark.parametrize("sgd", [False, True])
def test_compiled_step_reads_nothing_back_on_strict(sgd):
    """The step fit compiles (forward, loss, backward, optimizer, in-place sums) under the
    guard: a replayed graph could not do a host read either."""
    dev = dlx.device("strict")
    model, opt, step, total = _lenet_step(dev, dropout=True, sgd=sgd)
    compiled = dlx.compile_step(step)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with no_host_sync():
        for x, y in _batches(dev, 3, last=3):
            compiled(x, y)
            sched.step()  # host-side, between steps: writes the new rate to the device
    assert np.isfinite(float(dlx.to_numpy(total)))
    if not sgd:
        counts = [float(dlx.to_numpy(s["step"])) for s in opt.state.values()]
        assert counts == [3.0] * len(counts)


@pytest.mark.parametrize("device", ["cpu", pytest.param("strict", marks=pytest.mark.skipif(
    not HAS_STRICT, reason="array-api-strict not installed"))])
def test_learning_rate_and_step_counts_live_on_the_device(device):
    dev = dlx.device(device)
    params = [nn.Parameter(dev.asarray(np.ones(3), dtype="float32")) for _ in range(2)]
    opt = optim.Adam(params, lr=0.1)
    for t in range(3):
        params[0].grad = dev.asarray(np.ones(3), dtype="float32")
        if t != 1:  # the second parameter skips a step: its own count, as in torch
            params[1].grad = dev.asarray(np.ones(3), dtype="float32")
        opt.step()
        opt.zero_grad()
    steps = [float(dlx.to_numpy(opt.state[p]["step"])) for p in params]
    assert steps == [3.0, 2.0]
    (lr,) = [slot[1] for slot in opt._lr_slots.values()]
    opt.param_groups[0]["lr"] = 0.25  # set by hand between steps ...
    dlx.optim.optimizer.push_hyperparameters()  # ... reaches the device before the next
    assert float(dlx.to_numpy(lr)) == 0.25
    sd = opt.state_dict()
    opt2 = optim.Adam([nn.Parameter(dev.asarray(np.ones(3), dtype="float32")) for _ in range(2)])
    opt2.load_state_dict(sd)
    assert [float(dlx.to_numpy(s["step"])) for s in opt2.state.values()] == [3.0, 2.0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_reports_the_step_whose_loss_became_nan():
    dev = dlx.device("cpu")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10, device=dev))
    opt = optim.SGD(model.parameters(), lr=1e30)  # diverges within a few steps
    x, y = _batches(dev, 1, batch=64)[0]
    data = dlx.data.ArrayDataset(dlx.to_numpy(x) * 1e6, dlx.to_numpy(y))
    loader = dlx.data.DataLoader(data, batch_size=8, device=dev)
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+"):
        dlx.fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False, graph=True)


# ---- on a GPU --------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU (CuPy)")
@pytest.mark.parametrize("dropout, sgd", [(False, False), (True, False), (False, True)])
def test_replayed_graph_equals_eager_steps_bit_for_bit(dropout, sgd, steps=200):
    dev = dlx.device("cuda")
    batches = _batches(dev, 10, batch=32, last=20)
    m1, _, s1, t1 = _lenet_step(dev, dropout=dropout, sgd=sgd)
    with dev.backend.graph_kernels():  # eager, with the kernels the graph runs
        for i in range(steps):
            s1(*batches[i % len(batches)])
    m2, _, s2, t2 = _lenet_step(dev, dropout=dropout, sgd=sgd)
    compiled = dlx.compile_step(s2)
    for i in range(steps):
        compiled(*batches[i % len(batches)])
    assert compiled.graphs == 2  # the full batches' graph and the short last batch's
    assert float(dlx.to_numpy(t1)) == float(dlx.to_numpy(t2))
    for k, v in _weights(m1).items():
        np.testing.assert_array_equal(v, _weights(m2)[k], err_msg=k)


@pytest.mark.parametrize("device", ["cpu", pytest.param("strict", marks=pytest.mark.skipif(
    not HAS_STRICT, reason="array-api-strict not installed"))])
def test_a_step_updates_its_state_where_it_lies(device):
    """A captured graph reads and writes fixed addresses: every array a step updates (batch
    norm statistics, spectral norm's vectors, optimizer state, the step counts) is updated in
    place, and load_state_dict copies into the arrays it finds, as torch's copy_ does."""
    dev = dlx.device(device)
    dlx.manual_seed(0)
    model = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3, device=dev)),
                          nn.BatchNorm2d(4, device=dev), nn.Flatten(),
                          nn.Linear(4 * 30 * 30, 10, device=dev))
    opt = optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    loss_fn = nn.CrossEntropyLoss()
    x, y = _batches(dev, 1, batch=4)[0]

    def step():
        loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())
        opt.step()
        opt.zero_grad()

    step()
    before = {k: v for k, v in model.state_dict().items()}
    state = [dict(s) for s in opt.state.values()]
    saved = {k: dlx.to_numpy(v).copy() for k, v in before.items()}
    for _ in range(2):
        step()
    after = model.state_dict()
    assert [k for k, v in before.items() if after[k] is not v] == []
    assert all(s2[k] is v for s1, s2 in zip(state, opt.state.values()) for k, v in s1.items())
    moved = [k for k in saved if not np.array_equal(dlx.to_numpy(after[k]), saved[k])]
    assert "1.running_mean" in moved and "0.weight_u" in moved
    model.load_state_dict(saved)
    reloaded = model.state_dict()
    assert all(reloaded[k] is v for k, v in before.items())
    for k, v in saved.items():
        np.testing.assert_array_equal(dlx.to_numpy(reloaded[k]), v)


def test_step_counts_survive_a_round_trip_between_devices():
    """Parameters moved away and back before the next step: the counts stay theirs."""
    if not HAS_STRICT:
        pytest.skip("array-api-strict not installed")
    layer = nn.Linear(3, 2, device="cpu")
    opt = optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(2):
        for p in layer.parameters():
            p.grad = dlx.asarray(np.ones(p.shape), device="cpu")
        opt.step()
    layer.to("strict")
    layer.to("cpu")
    for p in layer.parameters():
        p.grad = dlx.asarray(np.ones(p.shape), device="cpu")
    opt.step()
    assert [float(dlx.to_numpy(s["step"])) for s in opt.state_dict()["state"].values()] == [3.0, 3.0]
