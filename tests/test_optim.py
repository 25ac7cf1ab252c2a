"""dlx.optim: the optimizers against float64 NumPy references of their formulas and against
torch.optim, the schedulers against torch's, checkpoints, device moves and bad input."""

from __future__ import annotations

import ast
import math
import pathlib

import numpy as np
import pytest
from conftest import HAS_CUDA

import dlx
from dlx import optim
from dlx.nn import Parameter
from dlx.optim import lr_scheduler

N_STEPS = 5
SHAPES = [(3, 4), (4,), (2, 3)]
GRAD_SCALES = [1.0, 0.1, 2.0, 0.05, 0.5]  # uneven, so AMSGrad's maximum matters


def _problem(seed=0):
    """Initial values and per-step gradients (float64); the last parameter has no gradient
    at step 2, so it must be skipped there (its step count does not advance)."""
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * c for s in SHAPES] for c in GRAD_SCALES]
    grads[2][-1] = None
    return p0, grads


# ---- float64 references, written from the documented formulas ----------------------------------
def ref_sgd(p, grads, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
    out, buf = [], None
    for g in grads:
        if g is not None:
            g = g + weight_decay * p
            if momentum:
                buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
                g = g + momentum * buf if nesterov else buf
            p = p - lr * g
        out.append(p)
    return out


def ref_rmsprop(
    p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False
):
    out, v, gbar, buf = [], 0.0, 0.0, 0.0
    for g in grads:
        if g is not None:
            g = g + weight_decay * p
            v = alpha * v + (1 - alpha) * g * g
            if centered:
                gbar = alpha * gbar + (1 - alpha) * g
                avg = np.sqrt(v - gbar * gbar) + eps
            else:
                avg = np.sqrt(v) + eps
            if momentum > 0:
                buf = momentum * buf + g / avg
                p = p - lr * buf
            else:
                p = p - lr * g / avg
        out.append(p)
    return out


def ref_adagrad(
    p, grads, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10
):
    out, s, t = [], np.full_like(p, initial_accumulator_value), 0
    for g in grads:
        if g is not None:
            t += 1
            g = g + weight_decay * p
            s = s + g * g
            p = p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
        out.append(p)
    return out


def ref_adam(
    p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, decoupled=False
):
    b1, b2 = betas
    out, m, v, vmax, t = [], 0.0, 0.0, 0.0, 0
    for g in grads:
        if g is not None:
            t += 1
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            vmax = np.maximum(vmax, v)
            vhat = vmax if amsgrad else v
            p = p - lr / (1 - b1**t) * m / (np.sqrt(vhat) / np.sqrt(1 - b2**t) + eps)
        out.append(p)
    return out


def ref_adamw(p, grads, weight_decay=1e-2, **kw):
    return ref_adam(p, grads, weight_decay=weight_decay, decoupled=True, **kw)


CASES = [
    ("SGD", ref_sgd, dict(lr=0.1)),
    ("SGD", ref_sgd, dict(lr=0.1, momentum=0.9)),
    ("SGD", ref_sgd, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", ref_sgd, dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("RMSprop", ref_rmsprop, dict()),
    ("RMSprop", ref_rmsprop, dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", ref_rmsprop, dict(centered=True, eps=1e-6)),
    ("RMSprop", ref_rmsprop, dict(centered=True, momentum=0.9, weight_decay=0.01)),
    ("Adagrad", ref_adagrad, dict()),
    ("Adagrad", ref_adagrad, dict(lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("Adam", ref_adam, dict()),
    ("Adam", ref_adam, dict(lr=0.01, weight_decay=0.1)),
    ("Adam", ref_adam, dict(amsgrad=True, betas=(0.8, 0.99), eps=1e-6)),
    ("AdamW", ref_adamw, dict()),
    ("AdamW", ref_adamw, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]
# one case per optimizer with every option on: checkpoints, devices, dtypes
FULL = {
    "SGD": dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.05),
    "RMSprop": dict(centered=True, momentum=0.9, weight_decay=0.01),
    "Adagrad": dict(lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.5),
    "Adam": dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    "AdamW": dict(lr=0.01, weight_decay=0.1, amsgrad=True),
}


def _params(values, dev, dtype):
    return [Parameter(dlx.asarray(v, device=dev, dtype=dtype)) for v in values]


def _set_grads(params, grads, dev, dtype):
    for p, g in zip(params, grads):
        p.grad = None if g is None else dlx.asarray(g, device=dev, dtype=dtype)


def _run(opt, params, grads, dev, dtype):
    for gs in grads:
        _set_grads(params, gs, dev, dtype)
        opt.step()


def _state_arrays(opt):
    """The state arrays in the parameters' dtype (all but the float64 step counts)."""
    return [v for s in opt.state.values() for k, v in s.items() if k != "step" and hasattr(v, "shape")]


# ---- (a) the formulas, float64, every device ---------------------------------------------------
@pytest.mark.parametrize("name, ref, kw", CASES, ids=CASE_IDS)
def test_matches_float64_reference(dev, name, ref, kw):
    p0, grads = _problem()
    params = _params(p0, dev, "float64")
    opt = getattr(optim, name)(params, **kw)
    expected = [ref(v, [gs[i] for gs in grads], **kw) for i, v in enumerate(p0)]
    for t, gs in enumerate(grads):
        _set_grads(params, gs, dev, "float64")
        opt.step()
        for i, (p, g) in enumerate(zip(params, gs)):
            np.testing.assert_allclose(
                dlx.to_numpy(p.data),
                expected[i][t],
                rtol=1e-12,
                atol=1e-14,
                err_msg=f"{name} param {i} step {t}",
            )
            if g is not None:  # the optimizer never writes into .grad
                np.testing.assert_array_equal(dlx.to_numpy(p.grad), g)
    for p in params:
        assert dlx.device_of(p.data) == dev
    for a in _state_arrays(opt):
        assert dlx.device_of(a) == dev


# ---- (b) PyTorch -----------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("name, ref, kw", CASES, ids=CASE_IDS)
def test_matches_torch_float32(dev, name, ref, kw):
    torch = pytest.importorskip("torch")
    p0, grads = _problem(1)
    params = _params(p0, dev, "float32")
    tparams = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)) for v in p0]
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    for t, gs in enumerate(grads):
        _set_grads(params, gs, dev, "float32")
        for tp, g in zip(tparams, gs):
            tp.grad = None if g is None else torch.tensor(g, dtype=torch.float32)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(
                dlx.to_numpy(p.data),
                tp.detach().numpy(),
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{name} param {i} step {t}",
            )
    for p, tp in zip(params, tparams):  # same state names and values as torch's
        mine, theirs = opt.state.get(p, {}), topt.state.get(tp, {})
        assert set(mine) == set(theirs)
        for k, v in theirs.items():
            if k == "step":
                assert mine[k] == int(v)
            else:
                np.testing.assert_allclose(dlx.to_numpy(mine[k]), v.numpy(), rtol=1e-4, atol=1e-5)


def _torch_sched_pair(torch, make_opt, make_sched):
    """(dlx optimizer, dlx scheduler, torch optimizer, torch scheduler) built alike."""
    p0 = [np.ones((2,)), np.ones((3,))]
    params = _params(p0, "cpu", "float32")
    tparams = [torch.nn.Parameter(torch.ones(s)) for s in ((2,), (3,))]
    opt = make_opt(optim, params)
    topt = make_opt(torch.optim, tparams)
    return opt, make_sched(lr_scheduler, opt), topt, make_sched(torch.optim.lr_scheduler, topt)


def _two_groups(mod, params, **kw):
    return [{"params": [params[0]]}, {"params": [params[1]], **kw}]


SCHEDULES = {
    "step": (
        lambda m, ps: m.SGD(ps, lr=0.1, momentum=0.9),
        lambda s, o: s.StepLR(o, step_size=3, gamma=0.5),
        12,
    ),
    "cosine": (
        lambda m, ps: m.SGD(ps, lr=0.1),
        lambda s, o: s.CosineAnnealingLR(o, T_max=5, eta_min=0.01),
        23,  # past T_max: the bottom of the cosine and the way back up
    ),
    "cosine-groups": (
        lambda m, ps: m.Adam(_two_groups(m, ps, lr=0.3), lr=0.01),
        lambda s, o: s.CosineAnnealingLR(o, T_max=7),
        16,
    ),
    "onecycle-sgd-cos": (
        lambda m, ps: m.SGD(ps, lr=0.1, momentum=0.9),
        lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=20),
        19,
    ),
    "onecycle-sgd-linear-3phase": (
        lambda m, ps: m.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda s, o: s.OneCycleLR(
            o, max_lr=0.5, epochs=3, steps_per_epoch=7, anneal_strategy="linear", three_phase=True
        ),
        21,
    ),
    "onecycle-adam-betas": (
        lambda m, ps: m.Adam(_two_groups(m, ps, lr=0.3), lr=0.01),
        lambda s, o: s.OneCycleLR(o, max_lr=[0.01, 0.02], total_steps=15, pct_start=0.4),
        15,
    ),
    "onecycle-rmsprop-3phase": (
        lambda m, ps: m.RMSprop(ps, lr=0.01, momentum=0.5),
        lambda s, o: s.OneCycleLR(
            o,
            max_lr=0.05,
            total_steps=17,
            three_phase=True,
            base_momentum=0.8,
            max_momentum=0.9,
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        17,
    ),
    "onecycle-no-momentum": (
        lambda m, ps: m.AdamW(ps),
        lambda s, o: s.OneCycleLR(o, max_lr=0.01, total_steps=10, cycle_momentum=False),
        10,
    ),
}


def _momenta(opt):
    return [g["betas"] if "betas" in g else g.get("momentum") for g in opt.param_groups]


@pytest.mark.torch
@pytest.mark.parametrize("which", sorted(SCHEDULES))
def test_scheduler_matches_torch(which):
    torch = pytest.importorskip("torch")
    make_opt, make_sched, n = SCHEDULES[which]
    opt, sched, topt, tsched = _torch_sched_pair(torch, make_opt, make_sched)
    for t in range(n + 1):
        # exact: the same float64 formulas in the same order
        assert sched.get_last_lr() == tsched.get_last_lr(), f"step {t}"
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
        assert _momenta(opt) == _momenta(topt), f"step {t}"
        if t < n:
            opt.step()
            topt.step()
            sched.step()
            tsched.step()


def test_onecycle_past_total_steps_raises():
    params = _params([np.ones(2)], "cpu", "float32")
    sched = lr_scheduler.OneCycleLR(optim.SGD(params, momentum=0.9), max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        sched.step()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda o: lr_scheduler.StepLR(o, step_size=0), "step_size"),
        (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=0), "T_max"),
        (lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1), "total_steps OR"),
        (lambda o: lr_scheduler.OneCycleLR(o, 0.1, total_steps=5, pct_start=2.0), "pct_start"),
        (lambda o: lr_scheduler.OneCycleLR(o, 0.1, 5, anneal_strategy="exp"), "anneal_strategy"),
        (lambda o: lr_scheduler.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=5), "same length"),
    ],
)
def test_scheduler_bad_arguments(make, match):
    opt = optim.SGD(_params([np.ones(2)], "cpu", "float32"), lr=0.1)
    with pytest.raises(ValueError, match=match):
        make(opt)
    with pytest.raises(ValueError, match="momentum or beta1"):
        lr_scheduler.OneCycleLR(optim.Adagrad(opt.param_groups[0]["params"]), 0.1, 5)


# ---- (c) checkpoints, device moves, dtypes, bad input ---------------------------------------
def _as_host(tree):
    """What a checkpoint gives back: NumPy arrays for arrays, numpy scalars for numbers."""
    if isinstance(tree, dict):
        return {k: _as_host(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return (
            np.asarray(tree) if tree and isinstance(tree[0], float) else [_as_host(v) for v in tree]
        )
    if hasattr(tree, "shape"):
        return dlx.to_numpy(tree).copy()
    if isinstance(tree, float):
        return np.float64(tree)
    return tree


@pytest.mark.parametrize("name", sorted(FULL))
@pytest.mark.parametrize("target", ["same", "strict"])
def test_state_dict_round_trip(dev, name, target):
    """Save after 3 steps, load into a fresh optimizer (here or on strict), continue:
    the same parameters as the uninterrupted run."""
    if target == "strict":
        pytest.importorskip("array_api_strict")
    dst = dev if target == "same" else dlx.device("strict")
    p0, grads = _problem(2)
    cls = getattr(optim, name)
    params = _params(p0, dev, "float32")
    opt = cls(params, **FULL[name])
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for gs in grads[:3]:
        _set_grads(params, gs, dev, "float32")
        opt.step()
        sched.step()
    saved_opt, saved_sched = _as_host(opt.state_dict()), _as_host(sched.state_dict())

    params2 = _params([dlx.to_numpy(p.data) for p in params], dst, "float32")
    opt2 = cls(params2, lr=123.0)  # hyper-parameters come from the checkpoint
    sched2 = lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert type(opt2.param_groups[0]["lr"]) is float
    for a in _state_arrays(opt2):
        assert dlx.device_of(a) == dst
        assert str(dlx.to_numpy(a).dtype) == "float32"
    for gs in grads[3:]:
        _set_grads(params, gs, dev, "float32")
        _set_grads(params2, gs, dst, "float32")
        opt.step()
        opt2.step()
        sched.step()
        sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()
    for p, p2 in zip(params, params2):
        np.testing.assert_allclose(dlx.to_numpy(p2.data), dlx.to_numpy(p.data), rtol=1e-6)
    def steps(o):  # the counts as numbers (the arrays live on different devices)
        return {i: None if s.get("step") is None else float(dlx.to_numpy(s["step"]))
                for i, s in o.state_dict()["state"].items()}

    assert steps(opt) == steps(opt2)


def test_state_dict_shape():
    params = _params([np.ones((2, 2)), np.ones(3), np.ones(1)], "cpu", "float32")
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1)
    params[1].grad = dlx.asarray(np.ones(3), device="cpu")
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 0.5]
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(sd["state"]) == [1] and sd["state"][1]["step"] == 1
    assert sorted(sd["state"][1]) == ["exp_avg", "exp_avg_sq", "step"]


def _adam_sd():
    params = _params([np.ones((2, 2)), np.ones(3)], "cpu", "float32")
    opt = optim.Adam(params, amsgrad=True)
    for p in params:
        p.grad = dlx.asarray(np.ones(p.shape), device="cpu")
    opt.step()
    return opt, _as_host(opt.state_dict())


def _break(sd, how):
    if how == "not a dict":
        return [sd]
    if how == "no state":
        return {"param_groups": sd["param_groups"]}
    if how == "groups":
        sd["param_groups"] = sd["param_groups"] * 2
    elif how == "group size":
        sd["param_groups"][0]["params"] = [0]
    elif how == "duplicate":
        sd["param_groups"][0]["params"] = [0, 0]
    elif how == "index":
        sd["state"][7] = sd["state"].pop(1)
    elif how == "shape":
        sd["state"][0]["exp_avg"] = np.zeros(5, np.float32)
    elif how == "missing":
        del sd["state"][1]["max_exp_avg_sq"]
    elif how == "step":
        sd["state"][0]["step"] = -1
    elif how == "lr":
        sd["param_groups"][0]["lr"] = -0.5
    elif how == "betas":
        sd["param_groups"][0]["betas"] = np.asarray([0.9, 1.5])
    return sd


@pytest.mark.parametrize(
    "how, match",
    [
        ("not a dict", "'state' and 'param_groups'"),
        ("no state", "'state' and 'param_groups'"),
        ("groups", "2 parameter groups, the optimizer has 1"),
        ("group size", r"param_groups\[0\] has 1 parameters in the state dict but 2"),
        ("duplicate", "index 0 appears twice"),
        ("index", "parameter index 7"),
        ("shape", r"state\[0\]\['exp_avg'\] has shape \(5,\), the parameter has \(2, 2\)"),
        ("missing", r"state\[1\] lacks 'max_exp_avg_sq'"),
        ("step", "must be a count"),
        ("lr", "Invalid learning rate: -0.5"),
        ("betas", "Invalid beta parameter at index 1: 1.5"),
    ],
)
def test_load_state_dict_bad_input(how, match):
    opt, sd = _adam_sd()
    before = {id(p): dict(s) for p, s in opt.state.items()}
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(_break(sd, how))
    assert {id(p): dict(s) for p, s in opt.state.items()} == before  # nothing changed
    assert [dict(g) for g in opt.param_groups] == groups_before


def test_load_does_not_alias_the_checkpoint():
    opt, sd = _adam_sd()
    opt.load_state_dict(sd)
    kept = sd["state"][0]["exp_avg"].copy()
    p = opt.param_groups[0]["params"][0]
    p.grad = dlx.asarray(np.full((2, 2), 3.0), device="cpu")
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], kept)


@pytest.mark.parametrize("name", sorted(FULL))
def test_state_follows_parameter_moves(name):
    """``Module.to`` calls ``Parameter._move``, which must carry the optimizer state along."""
    pytest.importorskip("array_api_strict")
    strict, cpu = dlx.device("strict"), dlx.device("cpu")
    p0, grads = _problem(3)
    cls = getattr(optim, name)
    moved, stay = _params(p0, cpu, "float32"), _params(p0, cpu, "float32")
    opt, ref = cls(moved, **FULL[name]), cls(stay, **FULL[name])
    _run(opt, moved, grads[:2], cpu, "float32")
    _run(ref, stay, grads[:2], cpu, "float32")
    for p in moved:
        p._move(strict, None)
    assert _state_arrays(opt) and all(dlx.device_of(a) == strict for a in _state_arrays(opt))
    _run(opt, moved, grads[2:4], strict, "float32")
    _run(ref, stay, grads[2:4], cpu, "float32")
    for p, q in zip(moved, stay):
        np.testing.assert_allclose(dlx.to_numpy(p.data), dlx.to_numpy(q.data), rtol=1e-6)
    for p in moved:
        p._move(cpu, "float64")
    for a in _state_arrays(opt):
        assert dlx.device_of(a) == cpu and a.dtype == np.float64
    _run(opt, moved, grads[4:], cpu, "float64")
    assert all(p.data.dtype == np.float64 for p in moved)


@pytest.mark.parametrize("name", sorted(FULL))
def test_float32_stays_float32(dev, name):
    p0, grads = _problem(4)
    params = _params(p0, dev, "float32")
    opt = getattr(optim, name)(params, **FULL[name])
    for group in opt.param_groups:  # hyper-parameters read back from a checkpoint
        for k, v in list(group.items()):
            if isinstance(v, float):
                group[k] = np.float64(v)
    _run(opt, params, grads, dev, "float32")
    xp = dev.xp
    for a in [p.data for p in params] + _state_arrays(opt):
        assert a.dtype == xp.float32


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no usable CUDA GPU (CuPy)")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, kw", [("Adam", {}), ("Adam", {"weight_decay": 0.1}),
                                      ("AdamW", {"weight_decay": 0.1}),
                                      ("Adam", {"lr": 0.05, "betas": (0.5, 0.99), "eps": 1e-6})])
def test_fused_adam_kernel_gives_the_xp_code_bits(name, kw, dtype, monkeypatch):
    """On the GPU, Adam runs one fused kernel per parameter (backend.adam_step); with it
    switched off Adam runs its xp code. Both must give the same bits, step after step."""
    dev = dlx.device("cuda")
    assert dev.backend.adam_step is not None, "the CUDA backend has no fused adam_step"
    p0, grads = _problem(5)
    params = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(dev.backend, "adam_step", None)
        params[fused] = _params(p0, dev, dtype)
        _run(getattr(optim, name)(params[fused], **kw), params[fused], grads, dev, dtype)
    for a, b in zip(params[True], params[False]):
        np.testing.assert_array_equal(dlx.to_numpy(a.data), dlx.to_numpy(b.data))


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (optim.SGD, dict(lr=-1), "Invalid learning rate: -1"),
        (optim.SGD, dict(momentum=-0.1), "Invalid momentum value: -0.1"),
        (optim.SGD, dict(weight_decay=-1e-4), "Invalid weight_decay value"),
        (optim.SGD, dict(nesterov=True), "Nesterov momentum requires a momentum"),
        (optim.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
        (optim.RMSprop, dict(alpha=-0.5), "Invalid alpha value: -0.5"),
        (optim.RMSprop, dict(eps=-1.0), "Invalid epsilon value: -1.0"),
        (optim.RMSprop, dict(momentum=-1), "Invalid momentum value: -1"),
        (optim.Adagrad, dict(lr_decay=-1), "Invalid lr_decay value: -1"),
        (optim.Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"),
        (optim.Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
        (optim.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
        (optim.Adam, dict(eps=-1e-8), "Invalid epsilon value"),
        (optim.AdamW, dict(weight_decay=-0.01), "Invalid weight_decay value: -0.01"),
        (optim.AdamW, dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    ],
)
def test_invalid_hyperparameters(cls, kw, match):
    params = _params([np.ones(2)], "cpu", "float32")
    with pytest.raises(ValueError, match=match):
        cls(params, **kw)
    with pytest.raises(ValueError, match=match):  # per-group overrides are checked too
        cls([{"params": params, **kw}])


def test_param_groups_and_bad_params():
    p1, p2, p3 = _params([np.zeros(2), np.zeros(2), np.zeros(2)], "cpu", "float32")
    opt = optim.SGD([{"params": [p1]}, {"params": p2, "lr": 0.5}], lr=0.1)
    assert opt.defaults["lr"] == 0.1
    for p in (p1, p2):
        p.grad = dlx.asarray(np.ones(2), device="cpu")
    opt.step()
    np.testing.assert_allclose(dlx.to_numpy(p1.data), -0.1)
    np.testing.assert_allclose(dlx.to_numpy(p2.data), -0.5)
    opt.add_param_group({"params": [p3], "momentum": 0.9})
    assert opt.param_groups[2]["lr"] == 0.1 and opt.param_groups[2]["momentum"] == 0.9
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p1]})
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="single Parameter"):
        optim.Adam(p1)
    with pytest.raises(TypeError, match="can only optimize Parameters"):
        optim.Adam([np.zeros(2)])
    assert "Parameter Group 1" in repr(opt)


def test_zero_grad():
    p1, p2 = _params([np.zeros(2), np.zeros(2)], "cpu", "float32")
    opt = optim.SGD([p1, p2], lr=0.1)
    g = dlx.asarray(np.ones(2), device="cpu")
    p1.grad = g
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p1.grad, 0.0)
    assert p2.grad is None
    np.testing.assert_array_equal(g, 1.0)  # a fresh zero array; the old one is untouched
    opt.zero_grad()
    assert p1.grad is None
    assert opt.step(closure=lambda: 3.5) == 3.5


def test_optim_never_imports_array_libraries():
    """THE RULE: dlx/optim reaches arrays only through the device's namespace."""
    root = pathlib.Path(dlx.__file__).parent / "optim"
    banned = {"numpy", "cupy", "numba"}
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n}"


def test_cosine_closed_form_agrees():
    """The recursive cosine stays on the closed form (to rounding) over several periods."""
    opt = optim.SGD(_params([np.ones(2)], "cpu", "float32"), lr=0.1)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.001)
    for t in range(1, 13):
        sched.step()
        want = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t / 4)) / 2
        assert sched.get_last_lr()[0] == pytest.approx(want, rel=1e-12, abs=1e-15)
