"""Checks the CUDA kernels against the reference backend on seeded random cases: the body of
tests/test_cuda_kernels.py (on a GPU) and of the CPU emulation tests in
tests/test_cuda_compile.py, and a quick check by hand (benchmarks/gpu_check.sh runs it where
pytest cannot):

    python tests/cuda_selfcheck.py [--count 200]

The reference runs in float64 on NumPy copies of the same inputs. Tolerances, per dtype:
|got - want| <= rtol * |want| + atol * max(1, max |want|), with (rtol, atol) from ``TOL``.
Max-pool outputs and argmax must be exact (the inputs have no ties).
"""

from __future__ import annotations

import numpy as np
from dlx.backends.base import conv2d_output_size, pool2d_output_size

TOL = {"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)}

def _conv(x, w, stride=1, padding=0, dilation=1, bias=True) -> dict:
    return {"x": x, "w": w, "stride": (stride, stride) if isinstance(stride, int) else stride,
            "padding": (padding, padding) if isinstance(padding, int) else padding,
            "dilation": (dilation, dilation) if isinstance(dilation, int) else dilation,
            "bias": bias}


def _pool(x, kernel, stride, padding=(0, 0), count_include_pad=True) -> dict:
    return {"x": x, "kernel": kernel, "stride": stride, "padding": padding,
            "count_include_pad": count_include_pad}


# Shapes of the benchmarks and shapes that need several grid-stride passes (more than
# 16 blocks/SM x 132 SMs x 256 threads), weights staged in chunks, or wide kernels.
LARGE_CONV_CASES = [
    _conv((128, 3, 32, 32), (6, 3, 5, 5)),
    _conv((128, 6, 14, 14), (16, 6, 5, 5)),
    _conv((512, 4, 36, 36), (8, 4, 3, 3), padding=1),
    _conv((512, 64, 8, 8), (64, 64, 3, 3), padding=1),
    _conv((4, 300, 6, 6), (300, 300, 3, 3), padding=1, bias=False),
    _conv((16, 32, 17, 17), (48, 32, 1, 1), stride=2),
    _conv((2, 3, 20, 20), (4, 3, 3, 11), padding=1, dilation=(1, 2)),
    _conv((1, 3, 200, 200), (5, 3, 7, 7), stride=2, padding=3),
]
LARGE_POOL_CASES = [
    _pool((128, 6, 28, 28), (2, 2), (2, 2)),
    _pool((1024, 16, 10, 10), (2, 2), (2, 2)),
    _pool((128, 64, 32, 32), (3, 3), (2, 2), (1, 1), count_include_pad=False),
    _pool((2, 3, 301, 257), (5, 4), (3, 1), (2, 1)),
]


def conv_cases(seed: int = 0, count: int = 200, max_size: int = 13) -> list[dict]:
    """Random small convolutions: odd shapes, stride, padding, dilation, with and without bias."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        N, C, OC = (int(v) for v in rng.integers(1, (5, 7, 10)))
        H, W = (int(v) for v in rng.integers(1, max_size + 1, 2))
        KH, KW = (int(v) for v in rng.integers(1, 6, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = tuple(int(v) for v in rng.integers(0, 3, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        OH, OW = conv2d_output_size(H, W, KH, KW, stride, padding, dilation)
        if OH < 1 or OW < 1:
            continue
        cases.append({"x": (N, C, H, W), "w": (OC, C, KH, KW), "stride": stride,
                      "padding": padding, "dilation": dilation, "bias": bool(rng.integers(2))})
    return cases


def pool_cases(seed: int = 0, count: int = 200, max_size: int = 13) -> list[dict]:
    """Random small pooling windows: odd shapes, stride, padding up to half the window."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        N, C = (int(v) for v in rng.integers(1, (4, 6)))
        H, W = (int(v) for v in rng.integers(1, max_size + 1, 2))
        kernel = tuple(int(v) for v in rng.integers(1, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        OH, OW = pool2d_output_size(H, W, kernel, stride, padding)
        if OH < 1 or OW < 1:
            continue
        cases.append({"x": (N, C, H, W), "kernel": kernel, "stride": stride, "padding": padding,
                      "count_include_pad": bool(rng.integers(2))})
    return cases


def _reference():
    from dlx.backends.reference import conv, pooling

    return conv, pooling


def assert_close(what, got, want, dtype, case) -> None:
    """``got`` (the CUDA result, NumPy) against ``want`` (the float64 reference)."""
    rtol, atol = TOL[dtype]
    want = np.asarray(want, dtype=np.float64)
    if got.dtype != np.dtype(dtype):
        raise AssertionError(f"{what} {case}: returned {got.dtype}, expected {dtype}")
    if got.shape != want.shape:
        raise AssertionError(f"{what} {case}: shape {got.shape}, expected {want.shape}")
    if got.size == 0:
        return
    scale = max(1.0, float(np.abs(want).max()))
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= rtol * np.abs(want) + atol * scale)  # NaN counts as bad
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what} {dtype} {case}: {int(bad.sum())} of {bad.size} elements off; max error "
            f"{np.nanmax(err):.3g} (scale {scale:.3g}); first at {first}: got {got[first]!r}, "
            f"want {want[first]!r}"
        )


def _assert_same(what, first, second, case) -> None:
    if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first, second)):
        raise AssertionError(f"{what} {case}: two runs on the same inputs differ (not deterministic)")


def check_conv(backend, case, dtype, seed=0, repeat=False, index=0) -> None:
    """Forward, backward-data, backward-weight and bias gradient of one case."""
    ref_conv, _ = _reference()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x"]).astype(dtype)
    w = rng.standard_normal(case["w"]).astype(dtype)
    b = rng.standard_normal(case["w"][0]).astype(dtype) if case["bias"] else None
    geo = case["stride"], case["padding"], case["dilation"]
    N, _, H, W = case["x"]
    OC, _, KH, KW = case["w"]
    dy = rng.standard_normal((N, OC, *conv2d_output_size(H, W, KH, KW, *geo))).astype(dtype)

    f64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, dy)]
    want = [
        ref_conv.conv2d(f64[0], f64[1], f64[2], *geo),
        ref_conv.conv2d_backward_data(f64[3], f64[1], x.shape, *geo),
        ref_conv.conv2d_backward_weight(f64[0], f64[3], w.shape, *geo),
        f64[3].sum(axis=(0, 2, 3)),
    ]

    def run():
        def put(a):
            return None if a is None else backend.asarray(a, index, dtype)

        xd, wd, bd, dyd = (put(a) for a in (x, w, b, dy))
        y = backend.conv2d(xd, wd, bd, *geo)
        dx, dw, db = backend.conv2d_backward(xd, wd, dyd, *geo, need_dx=True, need_db=True)
        return [backend.to_numpy(a) for a in (y, dx, dw, db)]

    got = run()
    for what, g, wnt in zip(("conv2d", "conv2d_backward_data", "conv2d_backward_weight",
                             "conv2d bias gradient"), got, want):
        assert_close(what, g, wnt, dtype, case)
    if repeat:
        _assert_same("conv2d", got, run(), case)


def check_pool(backend, case, dtype, seed=0, repeat=False, index=0) -> None:
    """Max-pool (values, argmax, backward) and average pool (forward, backward) of one case."""
    _, ref_pool = _reference()
    rng = np.random.default_rng(seed)
    shape = case["x"]
    size = int(np.prod(shape))
    # distinct integers (exact in float32 below 2^24): no ties, so argmax is unique
    x_max = (rng.permutation(size) - size // 2).reshape(shape).astype(dtype)
    x_avg = rng.standard_normal(shape).astype(dtype)
    k, s, p, cip = case["kernel"], case["stride"], case["padding"], case["count_include_pad"]
    OH, OW = pool2d_output_size(shape[2], shape[3], k, s, p)
    dy = rng.standard_normal((shape[0], shape[1], OH, OW)).astype(dtype)
    f64 = [a.astype(np.float64) for a in (x_max, x_avg, dy)]

    want_y, want_arg = ref_pool.max_pool2d(f64[0], k, s, p)
    want_arg = np.asarray(want_arg)
    want = [
        want_y,
        ref_pool.max_pool2d_backward(f64[2], want_arg, shape, k, s, p),
        ref_pool.avg_pool2d(f64[1], k, s, p, cip),
        ref_pool.avg_pool2d_backward(f64[2], shape, k, s, p, cip),
    ]

    def run():
        xm, xa, dyd = (backend.asarray(a, index, dtype) for a in (x_max, x_avg, dy))
        y, arg = backend.max_pool2d(xm, k, s, p)
        dx = backend.max_pool2d_backward(dyd, arg, shape, k, s, p)
        ya = backend.avg_pool2d(xa, k, s, p, cip)
        dxa = backend.avg_pool2d_backward(dyd, shape, k, s, p, cip)
        return [backend.to_numpy(a) for a in (y, arg, dx, ya, dxa)]

    got = run()
    if got[1].dtype != np.int32 or not np.array_equal(got[1], want_arg.astype(np.int32)):
        raise AssertionError(f"max_pool2d argmax {dtype} {case}: differs from the reference")
    if not np.array_equal(got[0], want[0].astype(dtype)):
        raise AssertionError(f"max_pool2d {dtype} {case}: values differ from the reference")
    for what, g, wnt in zip(("max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"),
                            got[2:], want[1:]):
        assert_close(what, g, wnt, dtype, case)
    if repeat:
        _assert_same("pooling", got, run(), case)


def cuda_backend():
    """The CUDA backend; without array-api-compat (which only the layers need), one whose xp is
    cupy itself, so the kernels can still be checked and timed."""
    from dlx.backends.base import DeviceError
    from dlx.backends.cuda import CUDABackend

    try:
        return CUDABackend()
    except DeviceError as e:
        if "array-api-compat" not in str(e):
            raise
    print("array-api-compat is missing: using xp = cupy for the kernel checks")
    import sys

    import cupy

    sys.modules[CUDABackend.__module__]._import_xp = lambda: cupy
    return CUDABackend()


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="random cases per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-large", action="store_true", help="skip the large cases")
    args = parser.parse_args(argv)
    backend = cuda_backend()
    large_conv = [] if args.no_large else LARGE_CONV_CASES
    large_pool = [] if args.no_large else LARGE_POOL_CASES
    failures = 0
    runs = [(check_conv, conv_cases(args.seed, args.count) + large_conv),
            (check_pool, pool_cases(args.seed, args.count) + large_pool)]
    for check, cases in runs:
        for dtype in ("float32", "float64"):
            for i, case in enumerate(cases):
                try:
                    check(backend, case, dtype, seed=i, repeat=True)
                except AssertionError as e:
                    failures += 1
                    print("FAIL", e)
            print(f"{check.__name__} {dtype}: {len(cases)} cases checked", flush=True)
    print("all passed" if not failures else f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
