"""Per-kernel GPU timings: dlx's CUDA RawKernels vs CuPy im2col + cuBLAS vs cuDNN (PyTorch).

Shapes: LeNet-5's layers at batch 128 and 1024 (conv 3->6 5x5 on 32x32, max/avg pool 2 on
6x28x28, conv 6->16 5x5 on 14x14, pool 2 on 16x10x10) and a larger layer (64->64, 3x3,
pad 1, 32x32, batch 128). Per shape: forward, backward-data and backward-weight (pooling:
forward and backward). And the Linear layers' products (LeNet-5's three, the DCGAN
generator's first): dlx's GEMM (gemm.cu, what a captured step uses) against cuBLAS. Timed
with CUDA events by ``cupyx.profiler.benchmark`` after a warm-up; the table shows the median
GPU time and the median CPU time of one call (the launch overhead on the host). float32
throughout; cuDNN runs with TF32 off and ``cudnn.benchmark`` on, so it computes in the same
precision and picks its fastest algorithm.

    python benchmarks/kernels_cuda.py --out benchmarks/results/kernels_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _conv_shapes(batches):
    shapes = []
    for n in batches:
        shapes += [
            {"name": f"lenet.conv1 b{n}", "x": (n, 3, 32, 32), "w": (6, 3, 5, 5), "padding": 0},
            {"name": f"lenet.conv2 b{n}", "x": (n, 6, 14, 14), "w": (16, 6, 5, 5), "padding": 0},
        ]
    shapes.append({"name": "conv 64->64 3x3 b128", "x": (128, 64, 32, 32), "w": (64, 64, 3, 3), "padding": 1})
    return shapes


def _pool_shapes(batches):
    shapes = []
    for n in batches:
        shapes += [
            {"name": f"lenet.pool1 b{n}", "x": (n, 6, 28, 28)},
            {"name": f"lenet.pool2 b{n}", "x": (n, 16, 10, 10)},
        ]
    return shapes


# ------------------------------------------------------------------------------------------
# Baseline: CuPy im2col + cuBLAS (what a straightforward CuPy framework does)
# ------------------------------------------------------------------------------------------


def _windows(cp, x, KH, KW, stride, padding, dilation, fill=0.0):
    """The KH*KW strided views of the padded input, each (N, C, OH, OW)."""
    N, C, H, W = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    if ph or pw:
        x = cp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    views = [x[:, :, i * dh : i * dh + sh * (OH - 1) + 1 : sh, j * dw : j * dw + sw * (OW - 1) + 1 : sw]
             for i in range(KH) for j in range(KW)]
    return views, OH, OW


def im2col_conv2d(cp, x, w, b, stride, padding, dilation):
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    views, OH, OW = _windows(cp, x, KH, KW, stride, padding, dilation)
    cols = cp.stack(views, axis=2).reshape(N, C * KH * KW, OH * OW)
    y = cp.matmul(w.reshape(OC, -1), cols).reshape(N, OC, OH, OW)
    return y + b.reshape(1, OC, 1, 1)


def im2col_conv2d_backward_data(cp, dy, w, x_shape, stride, padding, dilation):
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    _, _, OH, OW = dy.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dcols = cp.matmul(w.reshape(OC, -1).T, dy.reshape(N, OC, OH * OW)).reshape(N, C, KH, KW, OH, OW)
    dx = cp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(KH):
        for j in range(KW):
            dx[:, :, i * dh : i * dh + sh * (OH - 1) + 1 : sh,
               j * dw : j * dw + sw * (OW - 1) + 1 : sw] += dcols[:, :, i, j]
    return dx[:, :, ph : ph + H, pw : pw + W]


def im2col_conv2d_backward_weight(cp, x, dy, w_shape, stride, padding, dilation):
    N, C, H, W = x.shape
    OC, _, KH, KW = w_shape
    views, OH, OW = _windows(cp, x, KH, KW, stride, padding, dilation)
    cols = cp.stack(views, axis=2).reshape(N, C * KH * KW, OH * OW)
    dw = cp.tensordot(dy.reshape(N, OC, OH * OW), cols, axes=([0, 2], [0, 2]))
    return dw.reshape(w_shape)


def im2col_max_pool2d(cp, x, k, s, p):
    views, OH, OW = _windows(cp, x, k[0], k[1], s, p, (1, 1), fill=-np.inf)
    stacked = cp.stack(views, axis=0)
    return stacked.max(axis=0), stacked.argmax(axis=0).astype(cp.int32)  # window offset, not h*W+w


def im2col_max_pool2d_backward(cp, dy, offset, x_shape, k, s, p):
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = s, p
    OH, OW = dy.shape[2:]
    dx = cp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    zero = cp.zeros_like(dy)
    for i in range(k[0]):
        for j in range(k[1]):
            dx[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += cp.where(
                offset == i * k[1] + j, dy, zero)
    return dx[:, :, ph : ph + H, pw : pw + W]


def im2col_avg_pool2d(cp, x, k, s, p):
    views, OH, OW = _windows(cp, x, k[0], k[1], s, p, (1, 1))
    return cp.stack(views, axis=0).sum(axis=0) / (k[0] * k[1])


def im2col_avg_pool2d_backward(cp, dy, x_shape, k, s, p):
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = s, p
    OH, OW = dy.shape[2:]
    g = dy / (k[0] * k[1])
    dx = cp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            dx[:, :, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw] += g
    return dx[:, :, ph : ph + H, pw : pw + W]


# ------------------------------------------------------------------------------------------


def _load_torch():
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA"
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"


def _gemm_shapes(batches):
    """The products of LeNet-5's Linear layers (forward x W^T, backward dy W and dy^T x) and
    of the DCGAN generator's first layer, at each batch size."""
    shapes = []
    for n in batches:
        for fin, fout in ((400, 120), (120, 84), (84, 10), (100, 6272)):
            shapes += [{"name": f"linear{fin}x{fout} b{n}", "op": "gemm fwd x@W^T", "a": (n, fin),
                        "b": (fout, fin), "ta": False, "tb": True},
                       {"name": f"linear{fin}x{fout} b{n}", "op": "gemm bwd dy@W", "a": (n, fout),
                        "b": (fout, fin), "ta": False, "tb": False},
                       {"name": f"linear{fin}x{fout} b{n}", "op": "gemm bwd dy^T@x", "a": (n, fout),
                        "b": (n, fin), "ta": True, "tb": False}]
    return shapes


def _bench_gemm(cp, record, rs, s):
    """dlx's GEMM (gemm.cu, what a captured step multiplies with) against cuBLAS (cupy.matmul),
    on the same operands, transposed views included."""
    from dlx.backends.cuda import gemm

    a = rs.standard_normal(s["a"], dtype=cp.float32)
    b = rs.standard_normal(s["b"], dtype=cp.float32)
    a = a.T if s["ta"] else a
    b = b.T if s["tb"] else b
    ours = gemm.matmul(a, b)
    record(s["name"], s["op"], "dlx", lambda: gemm.matmul(a, b))
    record(s["name"], s["op"], "cuBLAS (cupy)", lambda: cp.matmul(a, b), _maxdiff(cp, cp.matmul(a, b), ours))


def _time(fn, repeat, warmup):
    from cupyx.profiler import benchmark

    fn()  # compile / pick algorithms before the timed warm-up
    r = benchmark(fn, n_repeat=repeat, n_warmup=warmup)
    gpu = np.asarray(r.gpu_times)[0] * 1e6
    cpu = np.asarray(r.cpu_times) * 1e6
    return {"gpu_us_median": float(np.median(gpu)), "gpu_us_mean": float(gpu.mean()),
            "gpu_us_min": float(gpu.min()), "cpu_us_median": float(np.median(cpu))}


def _maxdiff(cp, a, b):
    a = cp.asarray(a)
    b = cp.asarray(b)
    scale = max(1.0, float(cp.abs(b).max()))
    return float(cp.abs(a.astype(cp.float64) - b.astype(cp.float64)).max()) / scale


def _bench_conv(cp, backend, torch, record, rs, s):
    stride = dil = (1, 1)
    pad = (s["padding"], s["padding"])
    x = rs.standard_normal(s["x"], dtype=cp.float32)
    w = rs.standard_normal(s["w"], dtype=cp.float32) * np.float32(0.1)
    b = rs.standard_normal(s["w"][0], dtype=cp.float32)
    y = backend.conv2d(x, w, b, stride, pad, dil)
    dy = rs.standard_normal(y.shape, dtype=cp.float32)
    name = s["name"]
    record(name, "conv fwd", "dlx", lambda: backend.conv2d(x, w, b, stride, pad, dil))
    record(name, "conv bwd_data", "dlx",
           lambda: backend.conv2d_backward_data(dy, w, x.shape, stride, pad, dil))
    record(name, "conv bwd_weight", "dlx",
           lambda: backend.conv2d_backward_weight(x, dy, w.shape, stride, pad, dil))
    record(name, "conv bwd_bias", "dlx", lambda: backend.conv2d_backward_bias(dy))
    ref_dx = backend.conv2d_backward_data(dy, w, x.shape, stride, pad, dil)
    ref_dw = backend.conv2d_backward_weight(x, dy, w.shape, stride, pad, dil)

    def fwd():
        return im2col_conv2d(cp, x, w, b, stride, pad, dil)

    def bwd_data():
        return im2col_conv2d_backward_data(cp, dy, w, x.shape, stride, pad, dil)

    def bwd_weight():
        return im2col_conv2d_backward_weight(cp, x, dy, w.shape, stride, pad, dil)

    impl = "cupy im2col+cuBLAS"
    record(name, "conv fwd", impl, fwd, _maxdiff(cp, fwd(), y))
    record(name, "conv bwd_data", impl, bwd_data, _maxdiff(cp, bwd_data(), ref_dx))
    record(name, "conv bwd_weight", impl, bwd_weight, _maxdiff(cp, bwd_weight(), ref_dw))
    if torch is None:
        return
    F = torch.nn.functional
    tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))

    def t_fwd():
        return F.conv2d(tx, tw, tb, stride, pad, dil)

    def t_bwd(mask):
        return torch.ops.aten.convolution_backward(
            tdy, tx, tw, [w.shape[0]], list(stride), list(pad), list(dil), False, [0, 0], 1, mask)

    impl = "cuDNN (torch)"
    record(name, "conv fwd", impl, t_fwd, _maxdiff(cp, cp.from_dlpack(t_fwd()), y))
    record(name, "conv bwd_data", impl, lambda: t_bwd([True, False, False]),
           _maxdiff(cp, cp.from_dlpack(t_bwd([True, False, False])[0]), ref_dx))
    record(name, "conv bwd_weight", impl, lambda: t_bwd([False, True, False]),
           _maxdiff(cp, cp.from_dlpack(t_bwd([False, True, False])[1]), ref_dw))
    record(name, "conv bwd_bias", "torch", lambda: t_bwd([False, False, True]))


def _bench_pool(cp, backend, torch, record, rs, s):
    k = st = (2, 2)
    p0 = (0, 0)
    name = s["name"]
    x = rs.standard_normal(s["x"], dtype=cp.float32)
    y, arg = backend.max_pool2d(x, k, st, p0)
    dy = rs.standard_normal(y.shape, dtype=cp.float32)
    ref_dx = backend.max_pool2d_backward(dy, arg, x.shape, k, st, p0)
    record(name, "maxpool fwd", "dlx", lambda: backend.max_pool2d(x, k, st, p0))
    record(name, "maxpool bwd", "dlx", lambda: backend.max_pool2d_backward(dy, arg, x.shape, k, st, p0))
    record(name, "avgpool fwd", "dlx", lambda: backend.avg_pool2d(x, k, st, p0, True))
    record(name, "avgpool bwd", "dlx", lambda: backend.avg_pool2d_backward(dy, x.shape, k, st, p0, True))
    _, off = im2col_max_pool2d(cp, x, k, st, p0)

    def max_fwd():
        return im2col_max_pool2d(cp, x, k, st, p0)

    def max_bwd():
        return im2col_max_pool2d_backward(cp, dy, off, x.shape, k, st, p0)

    impl = "cupy im2col"
    record(name, "maxpool fwd", impl, max_fwd, _maxdiff(cp, max_fwd()[0], y))
    record(name, "maxpool bwd", impl, max_bwd, _maxdiff(cp, max_bwd(), ref_dx))
    record(name, "avgpool fwd", impl, lambda: im2col_avg_pool2d(cp, x, k, st, p0))
    record(name, "avgpool bwd", impl, lambda: im2col_avg_pool2d_backward(cp, dy, x.shape, k, st, p0))
    if torch is None:
        return
    F = torch.nn.functional
    aten = torch.ops.aten
    tx, tdy = torch.from_dlpack(x), torch.from_dlpack(dy)
    ty, tidx = F.max_pool2d(tx, k, st, p0, return_indices=True)
    record(name, "maxpool fwd", "torch", lambda: F.max_pool2d(tx, k, st, p0, return_indices=True),
           _maxdiff(cp, cp.from_dlpack(ty), y))
    record(name, "maxpool bwd", "torch",
           lambda: aten.max_pool2d_with_indices_backward(tdy, tx, k, st, p0, [1, 1], False, tidx))
    record(name, "avgpool fwd", "torch", lambda: F.avg_pool2d(tx, k, st, p0))
    record(name, "avgpool bwd", "torch",
           lambda: aten.avg_pool2d_backward(tdy, tx, k, st, p0, False, True, None))


def run(batches, repeat, warmup, only=None):
    import cupy as cp
    from dlx.backends.cuda import cuda_info
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cuda_selfcheck import cuda_backend  # tests/cuda_selfcheck.py

    backend = cuda_backend()
    torch, torch_note = _load_torch()
    rows = []
    rs = cp.random.RandomState(0)

    def record(shape, op, impl, fn, check=None):
        t = _time(fn, repeat, warmup)
        row = {"shape": shape, "op": op, "impl": impl, **t}
        if check is not None:
            row["max_rel_diff_vs_dlx"] = check
        rows.append(row)
        print(f"{shape:24s} {op:16s} {impl:18s} {t['gpu_us_median']:10.1f} us  "
              f"(host {t['cpu_us_median']:7.1f} us)", flush=True)

    for s in _conv_shapes(batches):
        if not only or only in s["name"]:
            _bench_conv(cp, backend, torch, record, rs, s)
    for s in _pool_shapes(batches):
        if not only or only in s["name"]:
            _bench_pool(cp, backend, torch, record, rs, s)
    for s in _gemm_shapes(batches):
        if not only or only in s["name"]:
            _bench_gemm(cp, record, rs, s)
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": cuda_info(),
        "torch": torch_note,
        "settings": {"repeat": repeat, "warmup": warmup, "dtype": "float32",
                     "cudnn_benchmark": torch is not None, "tf32": False},
        "rows": rows,
    }


def _fmt(v, width=9):
    return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}s}"


def _ratio(base, ours):
    return f"{base / ours:8.2f}x" if (base is not None and ours) else f"{'-':>9s}"


def summary(result) -> str:
    """dlx's time relative to each baseline, per shape and op (>1: dlx is faster)."""
    by = {}
    for r in result["rows"]:
        by.setdefault((r["shape"], r["op"]), {})[r["impl"]] = r["gpu_us_median"]
    lines = [f"{'shape':24s} {'op':16s} {'dlx us':>9s} {'im2col us':>10s} {'torch us':>9s} "
             f"{'vs im2col':>9s} {'vs torch':>9s}"]
    for (shape, op), t in by.items():
        d = t.get("dlx")
        i = t.get("cupy im2col+cuBLAS", t.get("cupy im2col"))
        c = t.get("cuDNN (torch)", t.get("torch", t.get("cuBLAS (cupy)")))
        lines.append(f"{shape:24s} {op:16s} {_fmt(d)} {_fmt(i, 10)} {_fmt(c)} {_ratio(i, d)} {_ratio(c, d)}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--only", help="run only shapes whose name contains this")
    args = parser.parse_args(argv)
    result = run(args.batches, args.repeat, args.warmup, args.only)
    text = summary(result)
    print("\nmedian GPU time per call; ratio = baseline time / dlx time (>1: dlx faster)\n" + text)
    result["summary"] = text.splitlines()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
