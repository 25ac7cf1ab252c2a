"""The convolution and pooling kernels: the reference backend against loop-by-loop NumPy,
the Numba kernels against the reference, the reference on array-api-strict's device, and
everything against torch.nn.functional where PyTorch is installed.

Tolerance. A kernel output that sums K products (K = C*KH*KW for a convolution, N*OH*OW
for its weight gradient, the number of overlapping windows for a pooling gradient) is
compared with the float64 reference on the same inputs, elementwise, within
(K + 2) * u * M, where M is the same kernel applied to the absolute values (the sum of
|terms|) and u the unit roundoff (2**-24 for float32, 2**-53 for float64): the textbook
worst-case bound for summing K rounded terms in any order. It cannot flake whatever the
summation order, and still fails on one missing or misplaced term of typical size.
Max pooling must match exactly (values and argmax; inputs are tie-free permutations).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from dlx.backends import base
    from dlx.backends.cpu import conv as cpu_conv
    from dlx.backends.cpu import pooling as cpu_pool
    from dlx.backends.reference import conv as ref_conv
    from dlx.backends.reference import pooling as ref_pool
except ImportError:  # dlx not installed: import the backends from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backends import base
    from backends.cpu import conv as cpu_conv
    from backends.cpu import pooling as cpu_pool
    from backends.reference import conv as ref_conv
    from backends.reference import pooling as ref_pool

UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}


def assert_within_bound(got, want, magnitude, terms):
    """|got - want| <= (terms + 2) * u * magnitude elementwise (see the module docstring)."""
    got = np.asarray(got)
    assert got.shape == want.shape
    bound = (terms + 2) * UNIT_ROUNDOFF[got.dtype] * np.asarray(magnitude) + 1e-300
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} (terms={terms})"
    )


def tie_free(rng, shape, dtype=np.float64):
    """Distinct values in random order, exactly representable in float32."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n // 2) / 8.0).reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------- loop oracles


def loop_conv2d(x, w, b, stride, padding, dilation):
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    OH, OW = base.conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
    y = np.zeros((N, OC, OH, OW))
    for n, oc, oh, ow in np.ndindex(N, OC, OH, OW):
        s = 0.0 if b is None else b[oc]
        for c, i, j in np.ndindex(C, KH, KW):
            h = oh * stride[0] + i * dilation[0] - padding[0]
            v = ow * stride[1] + j * dilation[1] - padding[1]
            if 0 <= h < H and 0 <= v < W:
                s += x[n, c, h, v] * w[oc, c, i, j]
        y[n, oc, oh, ow] = s
    return y


def loop_conv2d_backward(x, w, dy, stride, padding, dilation):
    """(dx, dw) by scattering every product of the forward sum."""
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for n, oc, oh, ow in np.ndindex(*dy.shape):
        for c, i, j in np.ndindex(C, KH, KW):
            h = oh * stride[0] + i * dilation[0] - padding[0]
            v = ow * stride[1] + j * dilation[1] - padding[1]
            if 0 <= h < H and 0 <= v < W:
                dx[n, c, h, v] += w[oc, c, i, j] * dy[n, oc, oh, ow]
                dw[oc, c, i, j] += x[n, c, h, v] * dy[n, oc, oh, ow]
    return dx, dw


def loop_windows(x_shape, kernel, stride, padding):
    """Yield (n, c, oh, ow, [(h, w) real positions in row-major window order])."""
    N, C, H, W = x_shape
    OH, OW = base.pool2d_output_size(H, W, kernel, stride, padding)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        cells = []
        for i, j in np.ndindex(*kernel):
            h, v = oh * stride[0] + i - padding[0], ow * stride[1] + j - padding[1]
            if 0 <= h < H and 0 <= v < W:
                cells.append((h, v))
        yield n, c, oh, ow, cells


def loop_max_pool2d(x, kernel, stride, padding):
    N, C, H, W = x.shape
    OH, OW = base.pool2d_output_size(H, W, kernel, stride, padding)
    y, am = np.zeros((N, C, OH, OW)), np.zeros((N, C, OH, OW), dtype=np.int32)
    for n, c, oh, ow, cells in loop_windows(x.shape, kernel, stride, padding):
        best = max(cells, key=lambda hv: x[n, c, hv[0], hv[1]])  # first maximum wins
        y[n, c, oh, ow] = x[n, c, best[0], best[1]]
        am[n, c, oh, ow] = best[0] * W + best[1]
    return y, am


def loop_avg_pool2d(x, kernel, stride, padding, count_include_pad):
    N, C, H, W = x.shape
    OH, OW = base.pool2d_output_size(H, W, kernel, stride, padding)
    y = np.zeros((N, C, OH, OW))
    for n, c, oh, ow, cells in loop_windows(x.shape, kernel, stride, padding):
        count = kernel[0] * kernel[1] if count_include_pad else len(cells)
        y[n, c, oh, ow] = sum(x[n, c, h, v] for h, v in cells) / count
    return y


def loop_avg_pool2d_backward(dy, x_shape, kernel, stride, padding, count_include_pad):
    dx = np.zeros(x_shape)
    for n, c, oh, ow, cells in loop_windows(x_shape, kernel, stride, padding):
        count = kernel[0] * kernel[1] if count_include_pad else len(cells)
        for h, v in cells:
            dx[n, c, h, v] += dy[n, c, oh, ow] / count
    return dx


# ----------------------------------------------------------------------------- random cases


def conv_case(seed):
    """(x_shape, w_shape, stride, padding, dilation, dtype): a random valid convolution."""
    rng = np.random.default_rng(seed)
    KH, KW = (int(k) for k in rng.integers(1, 6, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    if seed % 2:  # half the cases take the direct (stride-1) path
        stride = (1, 1)
    padding = tuple(int(p) for p in rng.integers(0, 3, size=2))
    dilation = tuple(int(d) for d in rng.integers(1, 4, size=2))
    H, W = (int(d * (k - 1) + 1 - 2 * p + rng.integers(0, 9))
            for d, k, p in zip(dilation, (KH, KW), padding))
    H, W = max(H, 1), max(W, 1)
    big = seed % 20 == 0  # C*OC > 4096: the im2col + BLAS path at stride 1 too, if OH*OW < 256
    C = int(rng.integers(64, 80) if big else rng.integers(1, 7))
    OC = int(rng.integers(65, 80) if big else rng.integers(1, 9))
    N = int(rng.integers(1, 5))
    dtype = np.float32 if seed % 3 else np.float64
    return (N, C, H, W), (OC, C, KH, KW), stride, padding, dilation, dtype


def pool_case(seed):
    """(x_shape, kernel, stride, padding, dtype): random valid pooling (padding <= kernel/2)."""
    rng = np.random.default_rng(10_000 + seed)
    kernel = tuple(int(k) for k in rng.integers(1, 5, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    H, W = (max(1, k - 2 * p + int(rng.integers(0, 9))) for k, p in zip(kernel, padding))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)), H, W)
    dtype = np.float32 if seed % 3 else np.float64
    return shape, kernel, stride, padding, dtype


N_CONV, N_POOL = 240, 160


def conv_terms(w_shape, dy_shape):
    OC, C, KH, KW = w_shape
    N, _, OH, OW = dy_shape
    return C * KH * KW, OC * KH * KW, N * OH * OW  # per y, per dx, per dw element


# ----------------------------------------------------------------------------- (a) reference


REF_GEOMETRIES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1)),
    ((1, 2, 8, 9), (3, 2, 3, 2), (2, 1), (1, 2), (1, 1)),
    ((2, 1, 9, 7), (2, 1, 2, 3), (1, 2), (2, 0), (2, 2)),
    ((1, 3, 6, 8), (2, 3, 1, 1), (3, 2), (1, 1), (1, 3)),
    ((1, 2, 5, 5), (1, 2, 5, 5), (1, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation", REF_GEOMETRIES)
def test_reference_conv_matches_loops(x_shape, w_shape, stride, padding, dilation):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    y = ref_conv.conv2d(x, w, b, stride, padding, dilation)
    np.testing.assert_allclose(y, loop_conv2d(x, w, b, stride, padding, dilation), atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dw = loop_conv2d_backward(x, w, dy, stride, padding, dilation)
    got_dx = ref_conv.conv2d_backward_data(dy, w, x.shape, stride, padding, dilation)
    got_dw = ref_conv.conv2d_backward_weight(x, dy, w.shape, stride, padding, dilation)
    np.testing.assert_allclose(got_dx, dx, atol=1e-12)
    np.testing.assert_allclose(got_dw, dw, atol=1e-12)


POOL_GEOMETRIES = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 7, 9), (3, 2), (2, 1), (1, 1)),
    ((2, 1, 5, 6), (3, 3), (1, 1), (1, 0)),
    ((1, 2, 9, 5), (4, 3), (3, 2), (2, 1)),
]


@pytest.mark.parametrize("x_shape,kernel,stride,padding", POOL_GEOMETRIES)
def test_reference_pooling_matches_loops(x_shape, kernel, stride, padding):
    rng = np.random.default_rng(2)
    x = tie_free(rng, x_shape)
    y, am = ref_pool.max_pool2d(x, kernel, stride, padding)
    want_y, want_am = loop_max_pool2d(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(am, want_am)
    assert am.dtype == np.int32
    dy = rng.standard_normal(y.shape)
    dx = np.zeros(x_shape)
    np.add.at(dx.reshape(x_shape[0], x_shape[1], -1),
              (*np.indices(am.shape)[:2], am), dy)  # scatter-add at the argmax
    got = ref_pool.max_pool2d_backward(dy, am, x_shape, kernel, stride, padding)
    np.testing.assert_allclose(got, dx, atol=1e-12)
    for cip in (True, False):
        got = ref_pool.avg_pool2d(x, kernel, stride, padding, cip)
        want = loop_avg_pool2d(x, kernel, stride, padding, cip)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
        got = ref_pool.avg_pool2d_backward(dy, x_shape, kernel, stride, padding, cip)
        want = loop_avg_pool2d_backward(dy, x_shape, kernel, stride, padding, cip)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_reference_max_pool_first_maximum_and_nan():
    x = np.array([[[[1.0, 3.0, 3.0], [0.0, 3.0, -1.0], [np.nan, 2.0, 5.0]]]])
    y, am = ref_pool.max_pool2d(x, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(am[0, 0], [[1, 1], [6, 8]])  # first 3 wins; NaN wins
    assert np.isnan(y[0, 0, 1, 0]) and y[0, 0, 0, 0] == 3.0
    y, am = cpu_pool.max_pool2d(x, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(am[0, 0], [[1, 1], [6, 8]])
    ninf = np.full((1, 1, 2, 2), -np.inf)  # a window of -inf points at its first real element
    for pool in (ref_pool, cpu_pool):
        y, am = pool.max_pool2d(ninf, (2, 2), (2, 2), (1, 1))
        np.testing.assert_array_equal(am[0, 0], [[0, 1], [2, 3]])


# ----------------------------------------------------------------------------- (b) numba


@pytest.mark.parametrize("seed", range(N_CONV))
def test_cpu_conv_matches_reference(seed):
    check_cpu_conv(seed)


@pytest.mark.parametrize("seed", range(1, 40, 2))  # stride-1 cases
@pytest.mark.parametrize("method", ["direct", "columns", "gather"])
def test_cpu_conv_every_method_at_stride_1(seed, method, monkeypatch):
    monkeypatch.setattr(cpu_conv, "_method", lambda *geometry: method)
    check_cpu_conv(seed)


@pytest.mark.parametrize("seed", range(0, 40, 2))  # strided cases (the direct loops need stride 1)
@pytest.mark.parametrize("method", ["columns", "gather"])
def test_cpu_conv_both_strided_methods(seed, method, monkeypatch):
    """Every strided case by both methods, whatever its taps and channels (the rule sends
    those with few of either to the columns, the others to the gather kernels)."""
    monkeypatch.setattr(cpu_conv, "_method", lambda *geometry: method)
    check_cpu_conv(seed)


def test_cpu_conv_method_rule():
    """Stride 1 -> direct loops (unless many channels meet a small image); strided with at
    most _COLUMNS_MAX_TAPS taps or fewer than _GATHER_MIN_CHANNELS channels -> columns;
    else the gather kernels (implicit GEMM)."""
    method = cpu_conv._method
    assert method(3, 6, 5, 5, 28, 28, (1, 1)) == "direct"  # LeNet-5 conv1
    assert method(128, 128, 3, 3, 8, 8, (1, 1)) == "gather"
    assert method(1, 64, 4, 4, 14, 14, (2, 2)) == "columns"  # DCGAN discriminator conv1
    assert method(2, 64, 4, 4, 14, 14, (2, 2)) == "columns"
    assert method(3, 64, 4, 4, 14, 14, (2, 2)) == "columns"  # 48 taps, but 3 channels
    assert method(8, 64, 4, 4, 14, 14, (2, 2)) == "gather"
    assert method(64, 128, 4, 4, 7, 7, (2, 2)) == "gather"  # its conv2


def check_cpu_conv(seed):
    x_shape, w_shape, stride, padding, dilation, dtype = conv_case(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    geo = (stride, padding, dilation)

    y = cpu_conv.conv2d(x, w, b, *geo)
    assert y.dtype == dtype and y.flags.c_contiguous
    want = ref_conv.conv2d(x64, w64, b64, *geo)
    mag = ref_conv.conv2d(np.abs(x64), np.abs(w64), np.abs(b64), *geo)
    k_y, k_dx, k_dw = conv_terms(w_shape, want.shape)
    assert_within_bound(y, want, mag, k_y)

    dy = rng.standard_normal(want.shape).astype(dtype)
    dy64 = dy.astype(np.float64)
    dx = cpu_conv.conv2d_backward_data(dy, w, x_shape, *geo)
    assert dx.dtype == dtype and dx.shape == x_shape
    assert_within_bound(dx, ref_conv.conv2d_backward_data(dy64, w64, x_shape, *geo),
                        ref_conv.conv2d_backward_data(np.abs(dy64), np.abs(w64), x_shape, *geo),
                        k_dx)
    dw = cpu_conv.conv2d_backward_weight(x, dy, w_shape, *geo)
    assert dw.dtype == dtype and dw.shape == w_shape
    assert_within_bound(dw, ref_conv.conv2d_backward_weight(x64, dy64, w_shape, *geo),
                        ref_conv.conv2d_backward_weight(np.abs(x64), np.abs(dy64), w_shape, *geo),
                        k_dw)


def _check_cpu_conv(x_shape, w_shape, geo, seed):
    """The Numba forward and both backwards against the float64 reference, within the bound
    of their float32 accumulation (``assert_within_bound``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = cpu_conv.conv2d(x, w, None, *geo)
    k_y, k_dx, k_dw = conv_terms(w_shape, y.shape)
    assert_within_bound(y, ref_conv.conv2d(x64, w64, None, *geo),
                        ref_conv.conv2d(np.abs(x64), np.abs(w64), None, *geo), k_y)
    dy64 = rng.standard_normal(y.shape).astype(np.float32).astype(np.float64)
    dy = dy64.astype(np.float32)
    assert_within_bound(cpu_conv.conv2d_backward_data(dy, w, x_shape, *geo),
                        ref_conv.conv2d_backward_data(dy64, w64, x_shape, *geo),
                        ref_conv.conv2d_backward_data(np.abs(dy64), np.abs(w64), x_shape, *geo),
                        k_dx)
    assert_within_bound(cpu_conv.conv2d_backward_weight(x, dy, w_shape, *geo),
                        ref_conv.conv2d_backward_weight(x64, dy64, w_shape, *geo),
                        ref_conv.conv2d_backward_weight(np.abs(x64), np.abs(dy64), w_shape, *geo),
                        k_dw)


@pytest.mark.parametrize("x_shape,w_shape", [
    ((16, 3, 32, 32), (6, 3, 5, 5)),  # LeNet-5 conv1
    ((16, 6, 14, 14), (16, 6, 5, 5)),  # LeNet-5 conv2
])
def test_cpu_conv_lenet_shapes(x_shape, w_shape):
    _check_cpu_conv(x_shape, w_shape, ((1, 1), (0, 0), (1, 1)), seed=3)


@pytest.mark.parametrize("x_shape,w_shape,stride", [
    ((4, 64, 14, 14), (128, 64, 4, 4), (2, 2)),  # DCGAN discriminator conv2 (gather)
    ((3, 1, 28, 28), (64, 1, 4, 4), (2, 2)),  # DCGAN discriminator conv1
    ((2, 64, 14, 14), (1, 64, 4, 4), (2, 2)),  # the generator's last ConvTranspose2d, as a conv
])
def test_cpu_conv_dcgan_shapes(x_shape, w_shape, stride):
    """The DCGAN's strided convolutions at their channel counts: conv2 by the gather
    kernels; conv1 and the generator's last layer (16 taps) by the per-sample columns."""
    _check_cpu_conv(x_shape, w_shape, (stride, (1, 1), (1, 1)), seed=5)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", [
    ((4, 64, 14, 14), (128, 64, 4, 4), (2, 2), (1, 1)),  # gather: x's padded copy is kept
    ((3, 12, 9, 9), (20, 12, 3, 3), (2, 2), (1, 1)),  # gather, channels padded to 16
    ((3, 3, 28, 28), (64, 3, 4, 4), (2, 2), (1, 1)),  # columns (3 channels): nothing is kept
    ((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), (1, 1)),  # direct: nothing is kept
])
def test_cpu_conv_forward_keeps_its_input_copy_for_the_weight_gradient(x_shape, w_shape, stride,
                                                                       padding):
    """conv2d_forward's kept copy of x and conv2d_backward give the bits of the separate
    calls that make everything again; a kept copy of the wrong shape is ignored."""
    rng = np.random.default_rng(8)
    geo = (stride, padding, (1, 1))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    y, kept = cpu_conv.conv2d_forward(x, w, b, *geo)
    np.testing.assert_array_equal(y, cpu_conv.conv2d(x, w, b, *geo))
    gather = cpu_conv._method(x_shape[1], w_shape[0], *w_shape[2:], *y.shape[2:], stride) == "gather"
    assert (kept is not None) == gather
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want_dx = cpu_conv.conv2d_backward_data(dy, w, x_shape, *geo)
    want_dw = cpu_conv.conv2d_backward_weight(x, dy, w_shape, *geo)
    dx, dw, db = cpu_conv.conv2d_backward(x, w, dy, *geo, kept=kept)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)
    if gather or stride == (1, 1):
        np.testing.assert_array_equal(db, dy.sum(axis=(0, 2, 3)))
    else:  # the columns' weight-gradient pass sums dy for the bias gradient too
        dy64 = dy.astype(np.float64)
        assert_within_bound(db, dy64.sum(axis=(0, 2, 3)), np.abs(dy64).sum(axis=(0, 2, 3)),
                            dy[:, 0].size)
    assert cpu_conv.conv2d_backward(x, w, dy, *geo, need_dx=False, need_db=False,
                                    kept=kept)[::2] == (None, None)
    if kept is not None:
        np.testing.assert_array_equal(
            cpu_conv.conv2d_backward_weight(x, dy, w_shape, *geo, kept=kept), want_dw)
        wrong = kept[:-1]  # another x's copy: made again, not used
        np.testing.assert_array_equal(
            cpu_conv.conv2d_backward_weight(x, dy, w_shape, *geo, kept=wrong), want_dw)
        with pytest.raises(ValueError, match="dy has shape"):
            cpu_conv.conv2d_backward(x, w, dy[:1], *geo, kept=kept)


@pytest.mark.parametrize("m,k,n", [(128, 1024, 400), (1024, 128, 392), (600, 300, 100),
                                   (64, 1, 6272), (3, 1, 5)])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_parallel_matmul_is_matmul(m, k, n, layout):
    """Split by columns (n >= m) or rows over threads: the product within float32 rounding
    (each element one BLAS dot product over all of k). Not always np.matmul's bits: on
    OpenBLAS's Haswell kernels (AMD EPYC, 2026-12-01) some rows and columns of a block
    computed alone round differently from the same ones inside the whole product (its
    SkylakeX kernels gave the same bits). F: transposed operands."""
    from dlx.backends.cpu import threads

    threads.configure()
    rng = np.random.default_rng(6)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    if layout == "F":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    assert m * k * n >= threads._SPLIT_MIN_MACS or k == 1
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    magnitude = np.matmul(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    want = threads.parallel_matmul(a, b)
    assert want.shape == (m, n) and want.dtype == np.float32
    assert_within_bound(want, exact, magnitude, k)
    if k == 1:  # an outer product: one rounding per element, np.multiply's
        np.testing.assert_array_equal(want, np.matmul(a, b))
    out = np.empty_like(want)
    assert threads.parallel_matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_conv_carries_the_hash_of_simd_py():
    """Numba's cache keys conv.py's kernels by conv.py's content only; they inline
    simd.tile_fma, so conv.py must change whenever simd.py does (see SIMD_SOURCE_SHA256)."""
    import hashlib

    from dlx.backends.cpu import simd

    digest = hashlib.sha256(Path(simd.__file__).read_bytes()).hexdigest()[:16]
    assert cpu_conv.SIMD_SOURCE_SHA256 == digest, (
        f"simd.py changed: set SIMD_SOURCE_SHA256 = {digest!r} in backends/cpu/conv.py, so "
        f"that the kernels cached from the old simd.py are compiled again")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_fma_is_the_sum_over_taps_in_order(dtype):
    """tile_fma writes out[k*pitch + q0 + q] = init[r0+k] + sum_t w[t, r0+k] * src[offs[t]
    + q0 + q] for k < 6, q < 16, fused multiply-adds in tap order (the same bits as the
    plain Numba loop with contraction), and nothing else of out."""
    from dlx.backends.cpu.simd import ROWS, WIDTH, tile_fma
    from numba import njit

    @njit(fastmath={"contract"})
    def loops(src, offs, T, q0, w, r0, init, out, pitch):
        for k in range(ROWS):
            for q in range(WIDTH):
                a = init[r0 + k]
                for t in range(T):
                    a = a + w[t, r0 + k] * src[offs[t] + q0 + q]
                out[k * pitch + q0 + q] = a

    @njit
    def tile(src, offs, T, q0, w, r0, init, out, pitch):
        tile_fma(src, offs, T, q0, w, r0, init, out, pitch)

    rng = np.random.default_rng(3)
    src = rng.standard_normal(300).astype(dtype)
    T, r0, q0, pitch = 23, 6, 5, 40
    offs = rng.integers(0, 300 - q0 - WIDTH, 25).astype(np.int64)
    w = rng.standard_normal((T + 2, 14)).astype(dtype)
    init = rng.standard_normal(14).astype(dtype)
    got, want = np.full(6 * pitch, np.nan, dtype), np.full(6 * pitch, np.nan, dtype)
    tile(src, offs, T, q0, w, r0, init, got, pitch)
    loops(src, offs, T, q0, w, r0, init, want, pitch)
    np.testing.assert_array_equal(got, want)
    written = np.zeros(6 * pitch, bool)
    for k in range(ROWS):
        written[k * pitch + q0 : k * pitch + q0 + WIDTH] = True
    assert np.isnan(got[~written]).all() and not np.isnan(got[written]).any()
    exact = init[r0:r0 + ROWS, None].astype(np.float64) + np.einsum(
        "tk,tq->kq", w[:T, r0:r0 + ROWS].astype(np.float64),
        np.stack([src[o + q0 : o + q0 + WIDTH] for o in offs[:T]]).astype(np.float64))
    np.testing.assert_allclose(got[written].reshape(ROWS, WIDTH), exact,
                               rtol=T * np.finfo(dtype).eps * 8, atol=T * np.finfo(dtype).eps * 8)
    zero_taps = np.full(6 * pitch, np.nan, dtype)
    tile(src, offs, 0, q0, w, r0, init, zero_taps, pitch)  # no taps: the init values
    np.testing.assert_array_equal(zero_taps[written].reshape(ROWS, WIDTH),
                                  np.repeat(init[r0:r0 + ROWS, None], WIDTH, axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ostride", [1, 3])
@pytest.mark.parametrize("strides", [False, True])
def test_tile_gather_fma_is_the_sum_over_taps_in_order(dtype, ostride, strides):
    """tile_gather_fma adds to out[orow[k] + q*ostride] the sum over t of a[arow[k] + aoff[t]]
    * b[boff[t] + b0 + q], k < 6, q < 16, fused multiply-adds in tap order from out's value
    (the plain loop's bits), whole vectors (ostride 1) or element by element; offsets given
    as arrays or as fixed strides (aoff[t] = 3t, boff[t] = 5t); rows that repeat another
    row's offsets get the same value, not the sum twice; nothing else of out is written."""
    from dlx.backends.cpu.simd import ROWS, WIDTH, tile_gather_fma
    from numba import njit

    @njit(fastmath={"contract"})
    def loops(a, arow, aoff, b, boff, b0, T, out, orow, ostride):
        start = out.copy()
        for k in range(ROWS):
            for q in range(WIDTH):
                s = start[orow[k] + q * ostride]
                for t in range(T):
                    s = s + a[arow[k] + aoff[t]] * b[boff[t] + b0 + q]
                out[orow[k] + q * ostride] = s

    @njit
    def tile(a, arow, aoff, b, boff, b0, T, out, orow, ostride):
        tile_gather_fma(a, arow, aoff, b, boff, b0, T, out, orow, ostride)

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(200).astype(dtype), rng.standard_normal(300).astype(dtype)
    T, b0 = 37, 7
    arow = np.array([0, 5, 9, 9, 40, 2])  # rows 2 and 3 the same: a padded tile
    aoff, boff = rng.integers(0, 150, T + 3), rng.integers(0, 300 - b0 - WIDTH, T + 3)
    orow = np.array([0, 100, 300, 300, 500, 900])
    out = rng.standard_normal(1000).astype(dtype)
    got, want = out.copy(), out.copy()
    if strides:  # the same sums, the offsets as strides
        aoff, boff = np.arange(T + 3) * 3, np.arange(T + 3) * 5
        tile(a, arow, 3, b, 5, b0, T, got, orow, ostride)
    else:
        tile(a, arow, aoff, b, boff, b0, T, got, orow, ostride)
    loops(a, arow, aoff, b, boff, b0, T, want, orow, ostride)
    np.testing.assert_array_equal(got, want)
    written = np.zeros(out.size, bool)
    for k in range(ROWS):
        written[orow[k] + np.arange(WIDTH) * ostride] = True
    np.testing.assert_array_equal(got[~written], out[~written])
    rows = orow[:, None] + np.arange(WIDTH) * ostride
    exact = out[rows].astype(np.float64) + np.einsum(
        "kt,tq->kq", a[arow[:, None] + aoff[None, :T]].astype(np.float64),
        b[boff[:T, None] + b0 + np.arange(WIDTH)].astype(np.float64))
    np.testing.assert_allclose(got[rows], exact, rtol=T * np.finfo(dtype).eps * 8,
                               atol=T * np.finfo(dtype).eps * 8)
    none = out.copy()
    tile(a, arow, aoff, b, boff, b0, 0, none, orow, ostride)  # no taps: out unchanged
    np.testing.assert_array_equal(none, out)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_transpose_moves_one_8x8_block(dtype):
    """tile_transpose writes dst[d0 + c*dstride + r] = src[s0 + r*sstride + c], r, c < 8,
    and nothing else of dst (float32: 8-lane vectors; float64: four 4 x 4 blocks)."""
    from dlx.backends.cpu.simd import BLOCK, tile_transpose
    from numba import njit

    @njit
    def block(src, s0, sstride, dst, d0, dstride):
        tile_transpose(src, s0, sstride, dst, d0, dstride)

    src = np.arange(500, dtype=dtype)
    for s0, sstride, d0, dstride in ((0, 8, 0, 8), (3, 21, 5, 17), (7, 50, 100, 9)):
        dst = np.full(600, -1, dtype)
        block(src, s0, sstride, dst, d0, dstride)
        want = np.full(600, -1, dtype)
        for r in range(BLOCK):
            for c in range(BLOCK):
                want[d0 + c * dstride + r] = src[s0 + r * sstride + c]
        np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layout_copies_match_numpy(dtype):
    """The gather path's layout copies against NumPy's, on shapes with whole 8 x 8 blocks,
    edges that overlap the last block, and sides under 8 (scalar): ``_transpose``,
    ``_pad_nhwc`` (zero border and zero channels to whole 16s), ``_crop_nchw`` (its
    inverse) and ``_dy_panels`` (zero channels past OC)."""
    rng = np.random.default_rng(9)
    for R, C in ((8, 8), (13, 30), (64, 14), (5, 20), (20, 3), (1, 1)):
        ss, ds = C + 3, R + 5  # rows with gaps between them, in both
        src = rng.standard_normal(R * ss + 10).astype(dtype)
        dst = np.full(C * ds + 10, np.nan, dtype)
        cpu_conv._transpose(src, 2, ss, R, C, dst, 3, ds)
        want = np.full_like(dst, np.nan)
        r, c = np.arange(R), np.arange(C)[:, None]
        want[3 + c * ds + r] = src[2 + r * ss + c]
        np.testing.assert_array_equal(dst, want)
    for N, C, H, W, P in ((3, 64, 14, 14, 1), (2, 20, 5, 9, 2), (2, 9, 7, 6, 0), (1, 130, 8, 8, 1)):
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        Cp = -(-C // 16) * 16
        xp = np.full((N, H + 2 * P, W + 2 * P, Cp), np.nan, dtype)
        cpu_conv._pad_nhwc(0, N, x, P, P, xp)
        want = np.zeros_like(xp)
        want[:, P:P + H, P:P + W, :C] = x.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(xp, want)
        back = np.full_like(x, np.nan)
        cpu_conv._crop_nchw(0, N, xp, P, P, back)
        np.testing.assert_array_equal(back, x)
        a = x.reshape(N, C, H * W)
        panels = np.full((Cp // 16, N * H * W, 16), np.nan, dtype)
        cpu_conv._dy_panels(0, N, a, panels)
        wide = np.zeros((N, Cp, H * W), dtype)
        wide[:, :C] = a
        np.testing.assert_array_equal(panels, wide.reshape(N, Cp // 16, 16, H * W)
                                      .transpose(1, 0, 3, 2).reshape(Cp // 16, N * H * W, 16))


def test_parallel_for_runs_every_block_once_and_raises_a_blocks_error():
    """parallel_for hands [n*p//P, n*(p+1)//P) to kernel(lo, hi, *args), one block per
    thread, and the first block's or any other block's exception reaches the caller."""
    from dlx.backends.cpu import threads

    threads.configure()
    previous = threads.set_num_threads(3)
    try:
        seen = []
        lock = __import__("threading").Lock()

        def record(lo, hi, out):
            with lock:
                out.append((lo, hi))

        threads.parallel_for(record, 10, seen)
        assert sorted(seen) == [(0, 3), (3, 6), (6, 10)]
        seen.clear()
        threads.parallel_for(record, 2, seen)  # fewer items than threads: one block each
        assert sorted(seen) == [(0, 1), (1, 2)]
        threads.parallel_for(record, 0, seen)
        assert sorted(seen) == [(0, 1), (1, 2)]

        def fail_late(lo, hi):
            if lo > 0:
                raise ValueError(f"block {lo}")

        with pytest.raises(ValueError, match="block 3"):
            threads.parallel_for(fail_late, 10)

        inner = []

        def nested(lo, hi):  # a part that calls parallel_for again runs its blocks serially
            threads.parallel_for(record, 4, inner)

        threads.parallel_for(nested, 3)
        assert sorted(inner) == [(0, 1), (0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (2, 4), (2, 4), (2, 4)]
    finally:
        threads.set_num_threads(previous)
    with pytest.raises(ValueError, match="at least 1 thread"):
        threads.set_num_threads(0)


@pytest.mark.parametrize("count", [2, 3])
def test_cpu_kernels_give_the_same_bits_on_any_thread_count(count):
    """Blocks of the outer loop change nothing in the arithmetic: conv forward and
    backward-data (direct, gather and columns paths), the gather path's backward-weight (each
    thread sums its own taps over the whole batch), max pooling and batch norm give the same
    bits on one thread and on ``count`` (the other backward-weights' partial sums follow the
    thread count, as Numba's prange did: not compared)."""
    from dlx.backends.cpu import normalization, threads

    threads.configure()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 8, 9, 9)).astype(np.float32)
    convs = [(rng.standard_normal((6, 8, 3, 3)).astype(np.float32), ((1, 1), (1, 1), (1, 1))),
             (rng.standard_normal((6, 8, 4, 4)).astype(np.float32), ((2, 2), (1, 1), (1, 1))),
             (rng.standard_normal((6, 2, 4, 4)).astype(np.float32), ((2, 2), (1, 1), (1, 1)))]
    assert [cpu_conv._method(*g) for g in [(8, 6, 3, 3, 9, 9, (1, 1)), (8, 6, 4, 4, 4, 4, (2, 2)),
                                           (2, 6, 4, 4, 4, 4, (2, 2))]] == ["direct", "gather", "columns"]

    def run():
        out = []
        for w, geo in convs:
            y = cpu_conv.conv2d(x[:, :w.shape[1]], w, None, *geo)
            xs = (5, w.shape[1], 9, 9)
            out += [y, cpu_conv.conv2d_backward_data(y, w, xs, *geo)]
            if cpu_conv._method(w.shape[1], w.shape[0], *w.shape[2:], *y.shape[2:],
                                geo[0]) == "gather":
                out.append(cpu_conv.conv2d_backward_weight(x[:, :w.shape[1]], y, w.shape, *geo))
        y, am = cpu_pool.max_pool2d(x, (2, 2), (2, 2), (0, 0))
        out += [y, am, cpu_pool.max_pool2d_backward(y, am, x.shape, (2, 2), (2, 2), (0, 0))]
        y, saved, _ = normalization.batch_norm_forward(x, None, None, None, None, True, 1e-5)
        return out + [y, normalization.batch_norm_backward(saved, x)[0]]

    results = []
    for P in (1, count):
        previous = threads.set_num_threads(P)
        try:
            results.append(run())
        finally:
            threads.set_num_threads(previous)
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_init_draws_in_chunks_the_values_of_one_draw(monkeypatch):
    """dlx.init draws at most _CHUNK float64 values at a time (bounded memory) and gets the
    values one float64 draw of the whole shape gives, cast to float32."""
    import dlx
    from dlx import init, nn

    monkeypatch.setattr(init, "_CHUNK", 1000)
    for fill in ("uniform", "normal"):
        dlx.manual_seed(3)
        p = nn.Parameter(dlx.asarray(np.zeros((70, 33), np.float32)))
        (init.uniform_(p, -0.5, 0.25) if fill == "uniform" else init.normal_(p, 0.1, 0.02))
        monkeypatch.setattr(init, "_CHUNK", 1 << 40)
        dlx.manual_seed(3)
        q = nn.Parameter(dlx.asarray(np.zeros((70, 33), np.float32)))
        (init.uniform_(q, -0.5, 0.25) if fill == "uniform" else init.normal_(q, 0.1, 0.02))
        monkeypatch.setattr(init, "_CHUNK", 1000)
        assert p.data.dtype == np.float32 and p.data.shape == (70, 33)
        np.testing.assert_array_equal(dlx.to_numpy(p.data), dlx.to_numpy(q.data))


def test_cpu_conv_accepts_non_contiguous_and_rejects_mixed_dtypes():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 3, 9)).astype(np.float32).transpose(0, 2, 1, 3)
    w = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)[:, ::2]
    geo = ((1, 1), (1, 1), (1, 1))
    want = ref_conv.conv2d(x.astype(np.float64), w.astype(np.float64), None, *geo)
    np.testing.assert_allclose(cpu_conv.conv2d(x, w, None, *geo), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="mixed dtypes"):
        cpu_conv.conv2d(x, w.astype(np.float64), None, *geo)


@pytest.mark.parametrize("seed", range(N_POOL))
def test_cpu_pooling_matches_reference(seed):
    x_shape, kernel, stride, padding, dtype = pool_case(seed)
    rng = np.random.default_rng(seed)
    x = tie_free(rng, x_shape, dtype)
    geo = (kernel, stride, padding)

    y, am = cpu_pool.max_pool2d(x, *geo)
    want_y, want_am = ref_pool.max_pool2d(x, *geo)
    assert y.dtype == dtype and am.dtype == np.int32
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(am, want_am)

    # each input element is in at most this many windows: the terms of one gradient sum
    overlap = math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[1] / stride[1])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy64, x64 = dy.astype(np.float64), x.astype(np.float64)
    dx = cpu_pool.max_pool2d_backward(dy, am, x_shape, *geo)
    assert dx.dtype == dtype
    assert_within_bound(dx, ref_pool.max_pool2d_backward(dy64, am, x_shape, *geo),
                        ref_pool.max_pool2d_backward(np.abs(dy64), am, x_shape, *geo), overlap)

    for cip in (True, False):
        y = cpu_pool.avg_pool2d(x, *geo, cip)
        assert y.dtype == dtype
        assert_within_bound(y, ref_pool.avg_pool2d(x64, *geo, cip),
                            ref_pool.avg_pool2d(np.abs(x64), *geo, cip), kernel[0] * kernel[1])
        dx = cpu_pool.avg_pool2d_backward(dy, x_shape, *geo, cip)
        assert dx.dtype == dtype
        assert_within_bound(dx, ref_pool.avg_pool2d_backward(dy64, x_shape, *geo, cip),
                            ref_pool.avg_pool2d_backward(np.abs(dy64), x_shape, *geo, cip),
                            overlap)


# ----------------------------------------------------------------------------- (c) strict


@pytest.fixture(scope="module")
def strict():
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    return (lambda a: xps.asarray(a, device=dev)), (lambda a: np.asarray(a.to_device(
        xps.Device("CPU_DEVICE")))), dev


@pytest.mark.parametrize("seed", range(2, 10))
def test_reference_conv_on_strict_device(strict, seed):
    put, get, dev = strict
    x_shape, w_shape, stride, padding, dilation, dtype = conv_case(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    geo = (stride, padding, dilation)
    y = ref_conv.conv2d(put(x), put(w), put(b), *geo)
    assert y.device == dev
    np.testing.assert_array_equal(get(y), ref_conv.conv2d(x, w, b, *geo))
    dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
    dx = ref_conv.conv2d_backward_data(put(dy), put(w), x_shape, *geo)
    dw = ref_conv.conv2d_backward_weight(put(x), put(dy), w_shape, *geo)
    assert dx.device == dev and dw.device == dev
    np.testing.assert_array_equal(get(dx), ref_conv.conv2d_backward_data(dy, w, x_shape, *geo))
    np.testing.assert_array_equal(get(dw), ref_conv.conv2d_backward_weight(x, dy, w_shape, *geo))


@pytest.mark.parametrize("seed", range(6))
def test_reference_pooling_on_strict_device(strict, seed):
    put, get, dev = strict
    x_shape, kernel, stride, padding, dtype = pool_case(seed)
    rng = np.random.default_rng(seed)
    x = tie_free(rng, x_shape, dtype)
    geo = (kernel, stride, padding)
    y, am = ref_pool.max_pool2d(put(x), *geo)
    want_y, want_am = ref_pool.max_pool2d(x, *geo)
    assert y.device == dev and am.device == dev
    np.testing.assert_array_equal(get(y), want_y)
    np.testing.assert_array_equal(get(am), want_am)
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    dx = ref_pool.max_pool2d_backward(put(dy), am, x_shape, *geo)
    np.testing.assert_array_equal(get(dx), ref_pool.max_pool2d_backward(dy, want_am, x_shape, *geo))
    for cip in (True, False):
        y = ref_pool.avg_pool2d(put(x), *geo, cip)
        np.testing.assert_array_equal(get(y), ref_pool.avg_pool2d(x, *geo, cip))
        dx = ref_pool.avg_pool2d_backward(put(dy), x_shape, *geo, cip)
        assert dx.device == dev
        np.testing.assert_array_equal(get(dx), ref_pool.avg_pool2d_backward(dy, x_shape, *geo, cip))


# ----------------------------------------------------------------------------- (d) torch


@pytest.mark.torch
@pytest.mark.parametrize("seed", [s for s in range(60) if s % 5 == 3])
@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_conv_matches_torch(seed, kernels):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    impl = cpu_conv if kernels == "cpu" else ref_conv
    x_shape, w_shape, stride, padding, dilation, _ = conv_case(seed)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    geo = (stride, padding, dilation)
    tol = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(impl.conv2d(x, w, b, *geo), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(impl.conv2d_backward_data(dy, w, x_shape, *geo),
                               tx.grad.numpy(), **tol)
    np.testing.assert_allclose(impl.conv2d_backward_weight(x, dy, w_shape, *geo),
                               tw.grad.numpy(), **tol)


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(0, 60, 5))
@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_pooling_matches_torch(seed, kernels):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    impl = cpu_pool if kernels == "cpu" else ref_pool
    x_shape, kernel, stride, padding, _ = pool_case(seed)
    rng = np.random.default_rng(seed)
    x = tie_free(rng, x_shape)
    geo = (kernel, stride, padding)
    tx = torch.tensor(x, requires_grad=True)
    ty, ti = F.max_pool2d(tx, kernel, stride, padding, return_indices=True)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, am = impl.max_pool2d(x, *geo)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(am, ti.numpy())
    np.testing.assert_allclose(impl.max_pool2d_backward(dy, am, x_shape, *geo),
                               tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    for cip in (True, False):
        tx = torch.tensor(x, requires_grad=True)
        ty = F.avg_pool2d(tx, kernel, stride, padding, count_include_pad=cip)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(impl.avg_pool2d(x, *geo, cip), ty.detach().numpy(),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(impl.avg_pool2d_backward(dy, x_shape, *geo, cip),
                                   tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.torch
def test_float32_lenet_conv_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb)
    dy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dy))
    geo = ((1, 1), (0, 0), (1, 1))
    # both float32 with different summation orders: relative to the typical magnitude
    scale = dict(rtol=1e-5, atol=1e-5 * float(np.sqrt(150)))
    np.testing.assert_allclose(cpu_conv.conv2d(x, w, b, *geo), ty.detach().numpy(), **scale)
    np.testing.assert_allclose(cpu_conv.conv2d_backward_data(dy, w, x.shape, *geo),
                               tx.grad.numpy(), rtol=1e-5, atol=1e-5 * float(np.sqrt(400)))
    np.testing.assert_allclose(cpu_conv.conv2d_backward_weight(x, dy, w.shape, *geo),
                               tw.grad.numpy(), rtol=1e-5, atol=1e-5 * float(np.sqrt(800)))


@pytest.mark.parametrize("shape", [(16, 32, 7, 7), (9, 5), (4, 3, 11)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_cpu_fused_batch_norm_matches_the_xp_formulas(monkeypatch, shape, affine, batch_stats):
    """The CPU backend's Numba batch norm (taken on the cpu device: the module table's rows
    and float64 gradient checks run through it) against the xp code every other device
    runs, forward (y and the batch statistics) and backward, float32."""
    import dlx
    from dlx._device import device_of
    from dlx.nn import functional as F

    rng = np.random.default_rng(7)
    C = shape[1]
    x = dlx.asarray(rng.standard_normal(shape) * 3 + 1, dtype="float32")
    dy = dlx.asarray(rng.standard_normal(shape), dtype="float32")
    w, b = (dlx.asarray(rng.standard_normal(C), dtype="float32") if affine else None for _ in "wb")
    rm = dlx.asarray(rng.standard_normal(C), dtype="float32")
    rv = dlx.asarray(rng.random(C) + 0.5, dtype="float32")
    args = (x, rm, rv, w, b, batch_stats, 1e-5)

    y, ctx = F.batch_norm.forward(*args)
    assert ctx.saved[0] is device_of(x).backend  # the fused path was taken
    grads = F.batch_norm.backward(ctx, dy)
    monkeypatch.setattr(type(device_of(x).backend), "batch_norm_forward", lambda self, *a: None)
    want_y, want_ctx = F.batch_norm.forward(*args)
    want_grads = F.batch_norm.backward(want_ctx, dy)

    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    if batch_stats:
        for got, want in zip(ctx.aux[:2], want_ctx.aux[:2]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert ctx.aux[2] == want_ctx.aux[2]
    else:
        assert ctx.aux is None
    for got, want in zip(grads, want_grads):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("env,want", [
    ({}, "mmap threshold 32 MiB, trim threshold 1024 MiB"),
    ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "left to MALLOC_TRIM_THRESHOLD_"),
])
@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_cpu_backend_keeps_freed_memory_unless_the_user_tuned_malloc(env, want):
    """The CPU backend sets glibc's mmap and trim thresholds when it starts (a fresh process),
    reports it in its info, and leaves them to a user who set a MALLOC_* variable."""
    import subprocess

    code = ("import dlx\n"
            "from dlx._device import Device\n"
            "Device('cpu').backend\n"
            "from dlx.backends.cpu import CPUBackend\n"
            "print(CPUBackend.info()['malloc'])\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == want
