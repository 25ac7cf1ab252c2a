"""Every module: float64 gradient checks, a plain NumPy reference forward, PyTorch as an
extra oracle (float32 forward/backward within rtol 1e-4 / atol 1e-5), and float32 purity.

Cases are built from (class name, args, kwargs), so the same spec builds the dlx module
and, in the torch tests, ``torch.nn.<name>(*args, **kwargs)``: the API is PyTorch's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from dlx.backends.host_random import dtype_name

import dlx
from dlx import nn
from dlx.testing import gradcheck, xp_assert_close


@dataclass
class Case:
    id: str
    name: str
    args: tuple
    shape: tuple
    kwargs: dict = field(default_factory=dict)
    tie_free: bool = False  # max pooling: distinct values so the argmax is unique
    eval_mode: bool = False  # run in eval mode (after one training forward)
    torch: bool = True  # compare with torch (not for random layers)

    def build(self, device, dtype="float64"):
        m = getattr(nn, self.name)(*self.args, **self.kwargs).to(device, dtype)
        return m


CASES = [
    Case("linear", "Linear", (5, 3), (4, 5)),
    Case("linear_nobias", "Linear", (5, 3), (4, 5), {"bias": False}),
    Case("linear_3d", "Linear", (5, 2), (2, 3, 5)),
    Case("conv", "Conv2d", (3, 4, 3), (2, 3, 7, 6)),
    Case("conv_s2_p1_odd", "Conv2d", (2, 3, 3), (2, 2, 7, 9), {"stride": 2, "padding": 1}),
    Case("conv_dilated_rect", "Conv2d", (2, 3, (3, 2)), (1, 2, 9, 8),
         {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 3)}),
    Case("conv_nobias", "Conv2d", (2, 2, 2), (2, 2, 5, 4), {"bias": False}),
    Case("convT", "ConvTranspose2d", (3, 2, 3), (2, 3, 4, 5)),
    Case("convT_s2_p1", "ConvTranspose2d", (2, 3, 4), (1, 2, 3, 4), {"stride": 2, "padding": 1}),
    Case("convT_outpad", "ConvTranspose2d", (2, 2, 3), (2, 2, 3, 3),
         {"stride": 2, "padding": 1, "output_padding": 1}),
    Case("convT_dilated", "ConvTranspose2d", (2, 2, (3, 2)), (1, 2, 3, 4),
         {"stride": (2, 1), "padding": (1, 0), "dilation": (2, 1)}),
    Case("maxpool", "MaxPool2d", (2,), (2, 3, 6, 8), tie_free=True),
    Case("maxpool_s2_p1_odd", "MaxPool2d", (3,), (2, 2, 7, 9), {"stride": 2, "padding": 1},
         tie_free=True),
    Case("maxpool_overlap", "MaxPool2d", ((3, 2),), (1, 2, 7, 5), {"stride": 1}, tie_free=True),
    Case("avgpool", "AvgPool2d", (2,), (2, 3, 6, 8)),
    Case("avgpool_s2_p1", "AvgPool2d", (3,), (2, 2, 7, 9), {"stride": 2, "padding": 1}),
    Case("avgpool_exclude_pad", "AvgPool2d", (3,), (1, 2, 7, 6),
         {"stride": 2, "padding": 1, "count_include_pad": False}),
    Case("bn1d", "BatchNorm1d", (4,), (6, 4)),
    Case("bn1d_3d", "BatchNorm1d", (3,), (4, 3, 5)),
    Case("bn2d", "BatchNorm2d", (3,), (4, 3, 3, 5)),
    Case("bn2d_eval", "BatchNorm2d", (3,), (2, 3, 4, 3), eval_mode=True),
    Case("bn2d_noaffine", "BatchNorm2d", (2,), (3, 2, 3, 3), {"affine": False}),
    Case("bn1d_cumulative", "BatchNorm1d", (3,), (5, 3), {"momentum": None}),
    Case("dropout", "Dropout", (0.3,), (4, 6), torch=False),
    Case("flatten", "Flatten", (), (2, 3, 4, 5)),
    Case("unflatten", "Unflatten", (1, (3, 4)), (2, 12)),
    Case("upsample", "Upsample", (), (2, 3, 3, 4), {"scale_factor": 2}),
    Case("upsample_rect", "Upsample", (), (1, 2, 3, 2), {"scale_factor": (2, 3)}),
    Case("identity", "Identity", (), (3, 4)),
    Case("relu", "ReLU", (), (4, 5)),
    Case("leaky_relu", "LeakyReLU", (0.1,), (4, 5)),
    Case("elu", "ELU", (0.7,), (4, 5)),
    Case("selu", "SELU", (), (4, 5)),
    Case("sigmoid", "Sigmoid", (), (4, 5)),
    Case("tanh", "Tanh", (), (4, 5)),
    Case("softmax", "Softmax", (), (4, 5), {"dim": 1}),
    Case("softmax_3d_last", "Softmax", (), (2, 3, 4), {"dim": -1}),
    Case("log_softmax", "LogSoftmax", (), (4, 5), {"dim": 1}),
]
IDS = [c.id for c in CASES]


def make_input(case: Case, seed: int = 0) -> np.ndarray:
    """float64 host input; tie-free cases get a shuffled ramp (all values distinct)."""
    rng = np.random.default_rng(seed)
    if case.tie_free:
        n = math.prod(case.shape)
        return (rng.permutation(n).reshape(case.shape) / n * 4.0 - 2.0).astype(np.float64)
    return rng.standard_normal(case.shape)


def prepared(case: Case, device, dtype="float64", seed=0):
    module = case.build(device, dtype)
    x = dlx.asarray(make_input(case, seed), device=device, dtype=dtype)
    if case.eval_mode:
        module(dlx.asarray(make_input(case, seed + 1) * 2 + 1, device=device, dtype=dtype))
        module.eval()
    return module, x


# ---- gradient checks ---------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case, dev):
    module, x = prepared(case, dev)
    assert gradcheck(module, x)


# ---- NumPy reference forward ---------------------------------------------------------------
def _pad(x, ph, pw, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def ref_conv2d(x, w, b, stride, padding, dilation):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp_ = _pad(x, ph, pw)
    y = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for bb in range(kw):
                    patch = xp_[:, :, i * sh + a * dh, j * sw + bb * dw]  # (n, c)
                    y[:, :, i, j] += patch @ w[:, :, a, bb].T
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def ref_conv_transpose2d(x, w, b, stride, padding, dilation, output_padding):
    n, c, h, wd = x.shape
    _, oc, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, oc, oh + 2 * ph + sh + dh * kh, ow + 2 * pw + sw + dw * kw))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for bb in range(kw):
                    full[:, :, i * sh + a * dh, j * sw + bb * dw] += x[:, :, i, j] @ w[:, :, a, bb]
    y = full[:, :, ph : ph + oh, pw : pw + ow]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def ref_pool(x, k, s, p, kind, count_include_pad=True):
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    y = np.zeros((n, c, oh, ow))
    xp_ = _pad(x, p[0], p[1], -np.inf if kind == "max" else 0.0)
    ones = _pad(np.ones((1, 1, h, w)), p[0], p[1])
    for i in range(oh):
        for j in range(ow):
            win = xp_[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                hs, he = i * s[0], min(i * s[0] + k[0], h + 2 * p[0])
                ws, we = j * s[1], min(j * s[1] + k[1], w + 2 * p[1])
                count = (he - hs) * (we - ws) if count_include_pad else \
                    ones[0, 0, hs:he, ws:we].sum()
                y[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return y


def ref_forward(module, x):
    """The forward of ``module`` in plain NumPy float64 from its (host) parameters."""
    p = {k: dlx.to_numpy(v).astype(np.float64) for k, v in module.state_dict().items()}
    name = type(module).__name__
    if name == "Linear":
        y = x @ p["weight"].T
        return y + p["bias"] if "bias" in p else y
    if name == "Conv2d":
        return ref_conv2d(x, p["weight"], p.get("bias"), module.stride, module.padding, module.dilation)
    if name == "ConvTranspose2d":
        return ref_conv_transpose2d(x, p["weight"], p.get("bias"), module.stride, module.padding,
                                    module.dilation, module.output_padding)
    if name == "MaxPool2d":
        return ref_pool(x, module.kernel_size, module.stride, module.padding, "max")
    if name == "AvgPool2d":
        return ref_pool(x, module.kernel_size, module.stride, module.padding, "avg",
                        module.count_include_pad)
    if name.startswith("BatchNorm"):
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if module.training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
        else:
            mean, var = p["running_mean"], p["running_var"]
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + module.eps)
        if module.affine:
            y = y * p["weight"].reshape(shape) + p["bias"].reshape(shape)
        return y
    if name == "Flatten":
        return x.reshape(x.shape[0], -1)
    if name == "Unflatten":
        return x.reshape(x.shape[0], *module.unflattened_size)
    if name == "Upsample":
        sh, sw = module.scale_factor
        return x.repeat(sh, axis=2).repeat(sw, axis=3)
    if name == "Identity":
        return x
    if name == "ReLU":
        return np.maximum(x, 0)
    if name == "LeakyReLU":
        return np.where(x > 0, x, module.negative_slope * x)
    if name == "ELU":
        return np.where(x > 0, x, module.alpha * (np.exp(x) - 1))
    if name == "SELU":
        return 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1))
    if name == "Sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "Tanh":
        return np.tanh(x)
    if name in ("Softmax", "LogSoftmax"):
        e = np.exp(x - x.max(axis=module.dim, keepdims=True))
        sm = e / e.sum(axis=module.dim, keepdims=True)
        return sm if name == "Softmax" else np.log(sm)
    raise KeyError(name)


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "Dropout"],
                         ids=[c.id for c in CASES if c.name != "Dropout"])
def test_forward_matches_numpy(case, dev):
    module, x = prepared(case, dev)
    expected = ref_forward(module, make_input(case))
    xp_assert_close(module(x), expected, rtol=1e-10, atol=1e-12)


def test_dropout_statistics_and_mask(dev):
    m = nn.Dropout(0.25)
    x = dlx.asarray(np.ones((200, 100)), device=dev)
    y = dlx.to_numpy(m(x))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    dx = dlx.to_numpy(m.backward(dlx.asarray(np.full((200, 100), 2.0), device=dev)))
    np.testing.assert_array_equal(dx != 0, kept)  # the gradient uses the forward's mask
    m.eval()
    xp_assert_close(m(x), x)
    assert dlx.to_numpy(nn.Dropout(1.0)(x)).sum() == 0


def test_batchnorm_running_stats(dev):
    m = nn.BatchNorm2d(3, momentum=0.2).to(dev)
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 2)) * 3 + 1
    m(dlx.asarray(x, device=dev))
    rm = 0.2 * x.mean(axis=(0, 2, 3))
    rv = 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1)
    xp_assert_close(m.running_mean, rm.astype(np.float32), rtol=1e-5, atol=1e-6)
    xp_assert_close(m.running_var, rv.astype(np.float32), rtol=1e-5, atol=1e-6)
    assert int(dlx.to_numpy(m.num_batches_tracked)) == 1


# ---- float32 stays float32 -----------------------------------------------------------------
def _arrays_in(obj, depth=0):
    if hasattr(obj, "__array_namespace__") and hasattr(obj, "dtype"):
        yield obj
    elif isinstance(obj, (tuple, list)) and depth < 3:
        for o in obj:
            yield from _arrays_in(o, depth + 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_stays_float32(case, dev):
    module, x = prepared(case, dev, dtype="float32")
    y = module(x)
    dx = module.backward(dlx.asarray(np.ones(tuple(y.shape)), device=dev))
    found = [y, dx] + [p.grad for p in module.parameters()] + list(module.buffers())
    for m in module.modules():
        found += list(_arrays_in(m._cache))
    for a in found:
        name = dtype_name(a.dtype)
        assert name in ("float32", "int32", "int64", "bool"), f"{case.id}: found a {name} array"


# ---- PyTorch as an extra oracle ------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("case", [c for c in CASES if c.torch], ids=[c.id for c in CASES if c.torch])
def test_matches_torch_float32(case):
    torch = pytest.importorskip("torch")
    module, x = prepared(case, "cpu", dtype="float32")
    tm = getattr(torch.nn, case.name)(*case.args, **case.kwargs)
    # same names and shapes: dlx's state dict loads into torch as it is
    tm.load_state_dict({k: torch.from_numpy(np.array(dlx.to_numpy(v)))
                        for k, v in module.state_dict().items()})
    tm.train(module.training)
    tx = torch.from_numpy(dlx.to_numpy(x).copy()).requires_grad_(True)
    ty = tm(tx)
    y = module(x)
    xp_assert_close(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    r = np.random.default_rng(3).standard_normal(tuple(y.shape)).astype(np.float32)
    ty.backward(torch.from_numpy(r))
    dx = module.backward(dlx.asarray(r))
    xp_assert_close(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, p in module.named_parameters():
        xp_assert_close(p.grad, dict(tm.named_parameters())[name].grad.numpy(), rtol=1e-4,
                        atol=1e-5, err_msg=name)
    for name, b in module.named_buffers():
        xp_assert_close(b, dict(tm.named_buffers())[name].numpy(), rtol=1e-4, atol=1e-5,
                        err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("name, args", [
    ("Linear", (300, 40)), ("Conv2d", (6, 16, 5)), ("ConvTranspose2d", (16, 8, 4)),
])
def test_default_init_matches_torch_distribution(name, args):
    """Same names, shapes and init law as torch: U(-b, b) with b = 1/sqrt(fan_in), fan_in
    computed by torch's own rule from the weight shape."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m, tm = getattr(nn, name)(*args), getattr(torch.nn, name)(*args)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(tm.weight)
    bound = 1 / math.sqrt(fan_in)
    for (k, v), (tk, tv) in zip(m.state_dict().items(), tm.state_dict().items()):
        assert k == tk and tuple(v.shape) == tuple(tv.shape)
        a, t = dlx.to_numpy(v), tv.detach().numpy()
        assert a.dtype == np.float32
        assert np.abs(a).max() <= bound and np.abs(t).max() <= bound
        # a uniform sample's std has relative standard error sqrt(0.2 / n)
        assert abs(a.std() - bound / math.sqrt(3)) < 4 * math.sqrt(0.2 / a.size) * bound / math.sqrt(3)


def test_same_seed_same_weights_across_devices():
    pytest.importorskip("array_api_strict")
    dlx.manual_seed(7)
    a = nn.Conv2d(3, 4, 3, device="cpu")
    dlx.manual_seed(7)
    b = nn.Conv2d(3, 4, 3, device="strict")
    xp_assert_close(b.weight.data, a.weight.data, rtol=0, atol=0)
    dlx.manual_seed(8)
    c = nn.Conv2d(3, 4, 3, device="cpu")
    assert not np.array_equal(dlx.to_numpy(c.weight.data), dlx.to_numpy(a.weight.data))
