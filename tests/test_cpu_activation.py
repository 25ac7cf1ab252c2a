"""The CPU backend's fused ReLU / leaky ReLU kernels give the bits of the xp code they replace."""

import numpy as np
import pytest
from dlx.backends.cpu import activation as cpu_act

import dlx
from dlx.nn import functional as F


def xp_forward(x, slope):  # dlx.nn.functional's xp code (relu: slope 0)
    return np.maximum(x, 0.0) if slope == 0 else np.maximum(x, x * slope)


def xp_backward(t, dy, slope):
    g = (t > 0).astype(dy.dtype)
    with np.errstate(invalid="ignore"):  # 0 * inf: NaN, from either code
        if slope == 0:
            return g * dy
        g *= 1.0 - slope
        g += slope
        return g * dy


def special(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[:6] = [np.nan, -0.0, 0.0, np.inf, -np.inf, -1e-30]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 0.3, 1.0])
@pytest.mark.parametrize("size", [37, cpu_act._PARALLEL_MIN + 3])  # one thread, and split
def test_fused_leaky_relu_is_the_xp_code_bit_for_bit(dtype, slope, size):
    rng = np.random.default_rng(0)
    x = special(rng, (size,), dtype).reshape(-1, 1) if size % 2 else special(rng, (size,), dtype)
    dy = special(rng, x.shape, dtype)
    y = cpu_act.leaky_relu_forward(x, slope)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, xp_forward(x, slope))
    assert np.array_equal(np.signbit(y), np.signbit(xp_forward(x, slope)))  # -0.0 stays -0.0
    t = y if slope == 0 else x  # ReLU keeps its output, the leaky ReLU its input
    g = cpu_act.leaky_relu_backward(t, dy, slope)
    want = xp_backward(t, dy, slope)
    np.testing.assert_array_equal(g, want)
    assert np.array_equal(np.signbit(g), np.signbit(want))


def test_fused_kernels_decline_what_they_do_not_cover():
    x = np.ones((4, 6), np.float32)
    assert cpu_act.leaky_relu_forward(x[:, ::2], 0.1) is None  # not contiguous
    assert cpu_act.leaky_relu_forward(x, -0.5) is None  # a slope outside [0, 1]
    assert cpu_act.leaky_relu_forward(x.astype(np.float16), 0.1) is None
    assert cpu_act.leaky_relu_backward(x, x.astype(np.float64), 0.1) is None  # mixed dtypes
    assert cpu_act.leaky_relu_backward(x, x[:2], 0.1) is None  # shapes differ


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_relu_ops_agree_across_devices(device):
    """The op (fused on cpu, xp code on strict) gives the same bits either way."""
    rng = np.random.default_rng(1)
    x = special(rng, (3, 4, 50, 50), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want = {}
    for name, op, kw in (("relu", F.relu, {}), ("leaky", F.leaky_relu, {"negative_slope": 0.2}),
                         ("steep", F.leaky_relu, {"negative_slope": 1.5})):
        y, ctx = op.forward(dlx.asarray(x, device=device), **kw)
        (g,) = op.backward(ctx, dlx.asarray(dy, device=device))
        want[name] = (dlx.to_numpy(y), dlx.to_numpy(g))
        slope = kw.get("negative_slope", 0.0)
        if slope <= 1:
            np.testing.assert_array_equal(want[name][0], xp_forward(x, slope))
            np.testing.assert_array_equal(want[name][1],
                                          xp_backward(want[name][0] if slope == 0 else x, dy, slope))
        else:
            np.testing.assert_array_equal(want[name][0], np.where(x > 0, x, x * np.float32(slope)))
