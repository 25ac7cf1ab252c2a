"""Every module, one row each in CASES: float64 gradient checks, a plain NumPy reference
forward, PyTorch as an extra oracle (float32 forward/backward within rtol 1e-4 / atol 1e-5),
the functional pair (``dlx.nn.functional``) against the module, and float32 purity; on every
device. The harness is ``dlx.testing.opcase``: a new op joins with one row.

Rows built with ``nn_case(id, class name, args, kwargs, ...)`` make both the dlx module and,
for the torch check, ``torch.nn.<name>(*args, **kwargs)``: the API is PyTorch's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.nn import functional as F
from dlx.testing import OpCase, labels, nn_case, op_checks, tie_free, xp_assert_close


# ---- NumPy references: ref(module, float64 state dict, x) -> y -----------------------------
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


def ref_linear(m, p, x):
    y = x @ p["weight"].T
    return y + p["bias"] if "bias" in p else y


def ref_conv(m, p, x):
    return ref_conv2d(x, p["weight"], p.get("bias"), m.stride, m.padding, m.dilation)


def ref_conv_t(m, p, x):
    return ref_conv_transpose2d(x, p["weight"], p.get("bias"), m.stride, m.padding, m.dilation,
                                m.output_padding)


def ref_maxpool(m, p, x):
    return ref_pool(x, m.kernel_size, m.stride, m.padding, "max")


def ref_avgpool(m, p, x):
    return ref_pool(x, m.kernel_size, m.stride, m.padding, "avg", m.count_include_pad)


def ref_batch_norm(m, p, x):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if m.training or "running_mean" not in p:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = p["running_mean"], p["running_var"]
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + m.eps)
    if m.affine:
        y = y * p["weight"].reshape(shape) + p["bias"].reshape(shape)
    return y


def ref_upsample(m, p, x):
    sh, sw = m.scale_factor
    return x.repeat(sh, axis=2).repeat(sw, axis=3)


def ref_softmax(m, p, x):
    e = np.exp(x - x.max(axis=m.dim, keepdims=True))
    return e / e.sum(axis=m.dim, keepdims=True)


def ref_identity(m, p, x):
    return x


REF_ACTIVATION = {
    "relu": lambda m, p, x: np.maximum(x, 0),
    "leaky_relu": lambda m, p, x: np.where(x > 0, x, m.negative_slope * x),
    "elu": lambda m, p, x: np.where(x > 0, x, m.alpha * (np.exp(x) - 1)),
    "selu": lambda m, p, x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
    "sigmoid": lambda m, p, x: 1 / (1 + np.exp(-x)),
    "tanh": lambda m, p, x: np.tanh(x),
    "softmax": ref_softmax,
    "log_softmax": lambda m, p, x: np.log(ref_softmax(m, p, x)),
}


# ---- the functional pair, called as the module calls it: (module, x) -> (y, ctx) -----------
def _data(param):
    return None if param is None else param.data


def f_linear(m, x):
    return F.linear.forward(x, m.weight.data, _data(m.bias))


def f_conv(m, x):
    return F.conv2d.forward(x, m.weight.data, _data(m.bias), m.stride, m.padding, m.dilation)


def f_conv_t(m, x):
    return F.conv_transpose2d.forward(x, m.weight.data, _data(m.bias), m.stride, m.padding,
                                      m.output_padding, m.dilation)


def f_maxpool(m, x):
    return F.max_pool2d.forward(x, m.kernel_size, m.stride, m.padding)


def f_avgpool(m, x):
    return F.avg_pool2d.forward(x, m.kernel_size, m.stride, m.padding, m.count_include_pad)


def f_upsample(m, x):
    return F.upsample_nearest2d.forward(x, m.scale_factor)


def f_batch_norm(m, x):
    running_mean, running_var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    return F.batch_norm.forward(x, running_mean, running_var, _data(m.weight), _data(m.bias),
                                m.training or running_mean is None, m.eps)


def f_dropout(m, x):
    return F.dropout.forward(x, m.p, m.training)


def f_flatten(m, x):
    s, e = m.start_dim % x.ndim, m.end_dim % x.ndim
    return F.reshape.forward(x, x.shape[:s] + (math.prod(x.shape[s : e + 1]),) + x.shape[e + 1 :])


def f_unflatten(m, x):
    d = m.dim % x.ndim
    return F.reshape.forward(x, x.shape[:d] + tuple(m.unflattened_size) + x.shape[d + 1 :])


def f_identity(m, x):
    return F.identity.forward(x)


F_ACTIVATION = {
    "relu": lambda m, x: F.relu.forward(x),
    "leaky_relu": lambda m, x: F.leaky_relu.forward(x, m.negative_slope),
    "elu": lambda m, x: F.elu.forward(x, m.alpha),
    "selu": lambda m, x: F.selu.forward(x),
    "sigmoid": lambda m, x: F.sigmoid.forward(x),
    "tanh": lambda m, x: F.tanh.forward(x),
    "softmax": lambda m, x: F.softmax.forward(x, m.dim),
    "log_softmax": lambda m, x: F.log_softmax.forward(x, m.dim),
}


def activation(id, name, args=(), kwargs=None, *, op, inputs=(4, 5)):
    return nn_case(id, name, args, kwargs, inputs=inputs, ref=REF_ACTIVATION[op],
                   functional=F_ACTIVATION[op])


# ---- the table: one row per op and configuration ------------------------------------------
LINEAR = {"ref": ref_linear, "functional": f_linear}
CONV = {"ref": ref_conv, "functional": f_conv}
CONV_T = {"ref": ref_conv_t, "functional": f_conv_t}
MAXPOOL = {"ref": ref_maxpool, "functional": f_maxpool}
AVGPOOL = {"ref": ref_avgpool, "functional": f_avgpool}
BN = {"ref": ref_batch_norm, "functional": f_batch_norm}
DROPOUT = {"functional": f_dropout}

def ref_spectral_linear(power_iteration):
    def ref(m, p, x):
        w, u, v = p["weight_orig"], p["weight_u"], p["weight_v"]
        if power_iteration:
            v = w.T @ u
            v = v / max(np.linalg.norm(v), 1e-12)
            u = w @ v
            u = u / max(np.linalg.norm(u), 1e-12)
        return x @ (w / (u @ w @ v)).T + p["bias"]
    return ref


def spectral(make):
    return lambda dev, dtype: nn.utils.spectral_norm(make()).to(dev, dtype)


TRAIN_CHANGES_U = {"gradcheck": "in training every forward moves u and v (a power-iteration "
                                "step), so the function is not fixed; the eval rows check it"}

CASES = [
    nn_case("linear", "Linear", (5, 3), inputs=(4, 5), **LINEAR),
    nn_case("linear_nobias", "Linear", (5, 3), {"bias": False}, inputs=(4, 5), **LINEAR),
    nn_case("linear_3d", "Linear", (5, 2), inputs=(2, 3, 5), **LINEAR),
    nn_case("conv", "Conv2d", (3, 4, 3), inputs=(2, 3, 7, 6), **CONV),
    nn_case("conv_s2_p1_odd", "Conv2d", (2, 3, 3), {"stride": 2, "padding": 1}, inputs=(2, 2, 7, 9),
            **CONV),
    nn_case("conv_dilated_rect", "Conv2d", (2, 3, (3, 2)),
            {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 3)}, inputs=(1, 2, 9, 8), **CONV),
    nn_case("conv_nobias", "Conv2d", (2, 2, 2), {"bias": False}, inputs=(2, 2, 5, 4), **CONV),
    nn_case("convT", "ConvTranspose2d", (3, 2, 3), inputs=(2, 3, 4, 5), **CONV_T),
    nn_case("convT_s2_p1", "ConvTranspose2d", (2, 3, 4), {"stride": 2, "padding": 1},
            inputs=(1, 2, 3, 4), **CONV_T),
    nn_case("convT_outpad", "ConvTranspose2d", (2, 2, 3),
            {"stride": 2, "padding": 1, "output_padding": 1}, inputs=(2, 2, 3, 3), **CONV_T),
    nn_case("convT_dilated", "ConvTranspose2d", (2, 2, (3, 2)),
            {"stride": (2, 1), "padding": (1, 0), "dilation": (2, 1)}, inputs=(1, 2, 3, 4), **CONV_T),
    nn_case("convT_nobias", "ConvTranspose2d", (2, 3, 2), {"bias": False}, inputs=(2, 2, 3, 3),
            **CONV_T),
    nn_case("maxpool", "MaxPool2d", (2,), inputs=(tie_free((2, 3, 6, 8)),), **MAXPOOL),
    nn_case("maxpool_s2_p1_odd", "MaxPool2d", (3,), {"stride": 2, "padding": 1},
            inputs=(tie_free((2, 2, 7, 9)),), **MAXPOOL),
    nn_case("maxpool_overlap", "MaxPool2d", ((3, 2),), {"stride": 1}, inputs=(tie_free((1, 2, 7, 5)),),
            **MAXPOOL),
    nn_case("avgpool", "AvgPool2d", (2,), inputs=(2, 3, 6, 8), **AVGPOOL),
    nn_case("avgpool_s2_p1", "AvgPool2d", (3,), {"stride": 2, "padding": 1}, inputs=(2, 2, 7, 9),
            **AVGPOOL),
    nn_case("avgpool_exclude_pad", "AvgPool2d", (3,),
            {"stride": 2, "padding": 1, "count_include_pad": False}, inputs=(1, 2, 7, 6), **AVGPOOL),
    nn_case("upsample", "Upsample", (), {"scale_factor": 2}, inputs=(2, 3, 3, 4), ref=ref_upsample,
            functional=f_upsample),
    nn_case("upsample_rect", "Upsample", (), {"scale_factor": (2, 3)}, inputs=(1, 2, 3, 2),
            ref=ref_upsample, functional=f_upsample),
    nn_case("bn1d", "BatchNorm1d", (4,), inputs=(6, 4), **BN),
    nn_case("bn1d_3d", "BatchNorm1d", (3,), inputs=(4, 3, 5), **BN),
    nn_case("bn1d_eval", "BatchNorm1d", (3,), inputs=(5, 3), eval_mode=True, **BN),
    nn_case("bn1d_cumulative", "BatchNorm1d", (3,), {"momentum": None}, inputs=(5, 3), **BN),
    nn_case("bn2d", "BatchNorm2d", (3,), inputs=(4, 3, 3, 5), **BN),
    nn_case("bn2d_eval", "BatchNorm2d", (3,), inputs=(2, 3, 4, 3), eval_mode=True, **BN),
    nn_case("bn2d_noaffine", "BatchNorm2d", (2,), {"affine": False}, inputs=(3, 2, 3, 3), **BN),
    nn_case("bn2d_no_running_stats_eval", "BatchNorm2d", (2,), {"track_running_stats": False},
            inputs=(3, 2, 3, 3), eval_mode=True, **BN),
    # in a world of one SyncBatchNorm is BatchNorm (tests/test_distributed.py: two ranks)
    dataclasses.replace(nn_case("syncbn_world1", "SyncBatchNorm", (3,), inputs=(4, 3, 3, 5),
                                torch=False, **BN), torch=lambda torch: torch.nn.BatchNorm2d(3)),
    nn_case("dropout", "Dropout", (0.3,), inputs=(4, 6), torch=False, **DROPOUT),  # one seeded mask
    OpCase("spectral_linear", spectral(lambda: nn.Linear(5, 3)), (4, 5),
           ref=ref_spectral_linear(True), not_checked=TRAIN_CHANGES_U,
           torch=lambda torch: torch.nn.utils.spectral_norm(torch.nn.Linear(5, 3))),
    OpCase("spectral_linear_eval", spectral(lambda: nn.Linear(5, 3)), (4, 5), eval_mode=True,
           ref=ref_spectral_linear(False),
           torch=lambda torch: torch.nn.utils.spectral_norm(torch.nn.Linear(5, 3))),
    OpCase("spectral_conv_eval", spectral(lambda: nn.Conv2d(2, 3, 3, stride=2)), (2, 2, 7, 7),
           eval_mode=True,
           torch=lambda torch: torch.nn.utils.spectral_norm(torch.nn.Conv2d(2, 3, 3, stride=2))),
    OpCase("spectral_convT", spectral(lambda: nn.ConvTranspose2d(3, 2, 4, 2, 1)), (2, 3, 3, 3),
           not_checked=TRAIN_CHANGES_U,
           torch=lambda torch: torch.nn.utils.spectral_norm(torch.nn.ConvTranspose2d(3, 2, 4, 2, 1))),
    OpCase("spectral_convT_eval", spectral(lambda: nn.ConvTranspose2d(3, 2, 4, 2, 1)), (2, 3, 3, 3),
           eval_mode=True,
           torch=lambda torch: torch.nn.utils.spectral_norm(torch.nn.ConvTranspose2d(3, 2, 4, 2, 1))),
    nn_case("embedding", "Embedding", (7, 3), inputs=(labels((4, 5), 7),),
            ref=lambda m, p, idx: p["weight"][idx],
            functional=lambda m, idx: F.embedding.forward(idx, m.weight.data)),
    nn_case("embedding_padding", "Embedding", (7, 3), {"padding_idx": 2},
            inputs=(labels((6,), 7),), ref=lambda m, p, idx: p["weight"][idx],
            functional=lambda m, idx: F.embedding.forward(idx, m.weight.data, m.padding_idx),
            not_checked={"gradcheck": "the padding row gets no gradient by design (PyTorch's "
                                      "rule); the torch check covers it"}),
    nn_case("dropout_p0", "Dropout", (0.0,), inputs=(4, 6), ref=ref_identity, **DROPOUT),
    nn_case("dropout_eval", "Dropout", (0.3,), inputs=(4, 6), eval_mode=True, ref=ref_identity,
            **DROPOUT),
    nn_case("flatten", "Flatten", (), inputs=(2, 3, 4, 5), ref=lambda m, p, x: x.reshape(x.shape[0], -1),
            functional=f_flatten),
    nn_case("flatten_middle", "Flatten", (1, 2), inputs=(2, 3, 4, 5),
            ref=lambda m, p, x: x.reshape(2, 12, 5), functional=f_flatten),
    nn_case("unflatten", "Unflatten", (1, (3, 4)), inputs=(2, 12),
            ref=lambda m, p, x: x.reshape(x.shape[0], *m.unflattened_size), functional=f_unflatten),
    nn_case("identity", "Identity", (), inputs=(3, 4), ref=ref_identity, functional=f_identity),
    activation("relu", "ReLU", op="relu"),
    activation("leaky_relu", "LeakyReLU", (0.1,), op="leaky_relu"),
    activation("leaky_relu_steep", "LeakyReLU", (2.0,), op="leaky_relu"),
    activation("elu", "ELU", (0.7,), op="elu"),
    activation("selu", "SELU", op="selu"),
    activation("sigmoid", "Sigmoid", op="sigmoid"),
    activation("tanh", "Tanh", op="tanh"),
    activation("softmax", "Softmax", (), {"dim": 1}, op="softmax"),
    activation("softmax_3d_last", "Softmax", (), {"dim": -1}, op="softmax", inputs=(2, 3, 4)),
    activation("log_softmax", "LogSoftmax", (), {"dim": 1}, op="log_softmax"),
    activation("log_softmax_3d_first", "LogSoftmax", (), {"dim": 0}, op="log_softmax",
               inputs=(3, 2, 4)),
]


@pytest.mark.parametrize("case, check", op_checks(CASES))
def test_op(case, check, dev):
    """One test per (case, check, device): gradcheck, reference, torch, functional, float32."""
    check(case, dev)


def test_every_module_has_a_row():
    covered = {type(c.module("cpu", "float32")).__name__ for c in CASES}
    layers = {name for name in dir(nn) if isinstance(getattr(nn, name), type)
              and issubclass(getattr(nn, name), nn.Module) and not name.endswith("Loss")}
    missing = layers - covered - {"Module", "Sequential"}
    assert not missing, f"modules without a row in CASES: {sorted(missing)}"


# ---- what does not fit a row ---------------------------------------------------------------
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
