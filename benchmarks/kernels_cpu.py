"""Time the Numba CPU kernels against PyTorch's CPU ops on LeNet-5 shapes (batch 128).

    python benchmarks/kernels_cpu.py [--repeat 40] [--dtype float32]
    python benchmarks/kernels_cpu.py --threads   # the threading-rule experiment below

Prints min (median) milliseconds per call and torch/dlx (> 1: dlx is faster). The dev VM
(2 AMD EPYC Zen 4 cores, AVX-512, shared with other jobs) is noisy: take the min column,
and rerun when the medians jump to ~8 ms (a time slice lost to another process).

Notes (prediction -> measurement -> why), float32:

* Peak: 2 cores x 16 fp32 FMA/cycle; OpenBLAS sgemm 1000^3 reaches ~93 GFMA/s here.
* Conv, im2col + BLAS first: predicted memory-bound on cols (30 MB for conv1). Measured
  conv1 fwd 9 ms (im2col 1 ms + 128 small matmuls 5 ms), conv2 1.0 ms; even one big sgemm
  (16x150 @ 150x12800) takes 0.83 ms. BLAS does not pay at 3-16 channels.
* Direct "wide rows" (see backends/cpu/conv.py): one tap per pass predicted load/store bound
  (2 loads + 1 store per FMA), ~2 ms; measured 18 ms: ``x[p + off]`` with a signed index
  compiles to a wraparound check that blocks vectorisation. Slicing first (``x[off:off+L]``,
  then ``[p]``) gave 3.5 ms. Register blocking (2 output channels x 4 taps, FMA via
  fastmath "contract", L padded to whole vectors): conv1 fwd 1.0-1.1 ms vs torch 1.55-1.6.
  4x4 and 2x8 blocks and batch-blocked rows (fewer, longer passes) measured no better, so
  pass setup is not the limit; most likely the loads and stores are (per 8 FMAs: 4 unaligned
  512-bit loads, 2 loads and 2 stores of accumulators; inferred from the asm, not profiled).
  torch's oneDNN kernels keep outputs in registers and run conv2 near the sgemm rate (0.38-
  0.42 ms); ours computes 44.8M multiply-adds (wide rows, padding) at ~45% of it: 1.1 ms.
* Backward data: the scatter adjoint (kept) and the gather form (flipped weights on padded
  dy) measured within 20% of each other both ways. conv1 bwd data pads C=3 -> 4 and OC=6 -> 8
  (1.8x wasted multiply-adds): 2.0-2.2 ms, still 3.5x faster than torch (a LeNet step does
  not need it: the first layer's input needs no gradient).
* Crossover direct vs im2col+BLAS at stride 1 (batch 64, 3x3): direct wins up to C*OC=4096
  at 8x8 (5.9 vs 8.5 ms fwd) and at 128x128 channels on 16x16 (21 vs 39 ms); im2col wins for
  128x128 on 8x8 (14 vs 24 ms) and 256x256 on 4x4 (5 vs 13 ms) -> backends/cpu/conv.py
  `_method`. Strided convolutions with few taps: see `_COLUMNS_MAX_TAPS` there.
* Max pool: predicted memory-bound (~0.1 ms for pool1). Measured 1.3 ms; a hard-coded 2x2
  loop took 0.08 ms. Sorted input was 8x faster than random (branch mispredictions in
  ``if v > best``). Branch-free selects, a padded plane instead of bounds checks and
  unsigned indices: 0.78 ms; a kernel with the 2x2 window compiled in: 0.50-0.54 ms (torch
  1.6-1.9); the 0.08 ms loop also had stride and padding compiled in.
* Threads (--threads: a LeNet-5 step of these kernels + NumPy matmuls, one process per
  setting, min (median) ms on a quiet VM): dlx rule (Numba all cores, BLAS 1 thread) 6.8
  (7.1); library defaults (Numba omp 2 + OpenBLAS 2) 14.8 (20.0); Numba workqueue layer
  12.0 (13.3); OMP_WAIT_POLICY=passive 11.7 (12.1); Numba 1 thread 11.9 (12.3). Predicted:
  idle OpenBLAS workers busy-wait after each call and take the second core from Numba's
  worker; measured: up to 8 ms stalls (a whole time slice) when the two pools collide.
  A DCGAN-size stride-2 conv (im2col path, 64x64x16x16 -> 128 channels, fwd + both bwd)
  also ran faster with BLAS on 1 thread (49-54 vs 57-59 ms), its GEMMs split over Python
  threads by threads.parallel_matmul (13.5 -> 7.5-9 ms). Hence backends/cpu/threads.py.
  Since 2026-12-01 the kernels are ``nogil`` and run on dlx's own threads (Numba's
  ``parallel=True`` compiled too slowly: see threads.py). The same experiment then (quiet VM):
  dlx rule 7.43 (7.53); DLX_NUM_THREADS=1 13.75 (13.92); OPENBLAS_NUM_THREADS=2 as well
  12.48 (20.24): spinning BLAS workers still take the core from the kernels.

Recorded (min ms, same quiet run):

    kernel                                    dlx     torch   torch/dlx
    conv1 3->6 5x5 32x32 fwd                  1.06    1.55    1.47
    conv1 3->6 5x5 32x32 bwd data             1.98    7.56    3.81
    conv1 3->6 5x5 32x32 bwd weight+bias      1.35    1.71    1.27
    conv2 6->16 5x5 14x14 fwd                 1.14    0.38    0.34
    conv2 6->16 5x5 14x14 bwd data            1.11    0.96    0.87
    conv2 6->16 5x5 14x14 bwd weight+bias     1.48    0.88    0.60
    pool1 2x2 6x28x28 max fwd                 0.53    1.82    3.43
    pool1 2x2 6x28x28 max bwd                 0.12    0.13    1.13
    pool2 2x2 16x10x10 max fwd                0.27    0.61    2.24
    pool2 2x2 16x10x10 max bwd                0.06    0.06    1.07
    sum                                       9.11   15.69    1.72
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

# Always through the installed package: importing backends/ under a second module name
# would make Numba's disk cache hand that name's functions to dlx.backends later.
from dlx.backends.cpu import conv, pooling, threads

BATCH = 128
CONVS = [("conv1 3->6 5x5 32x32", 3, 6, 32), ("conv2 6->16 5x5 14x14", 6, 16, 14)]
POOLS = [("pool1 2x2 6x28x28", 6, 28), ("pool2 2x2 16x10x10", 16, 10)]
ONE, ZERO = (1, 1), (0, 0)


def timeit(fn, repeat):
    """(min, median) milliseconds of ``fn()`` over ``repeat`` runs, after two warm-ups."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * float(np.median(times))


def cases(dtype):
    """(name, dlx_fn, torch_fn) for every kernel on the LeNet-5 shapes."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    out = []
    for name, C, OC, H in CONVS:
        x = rng.standard_normal((BATCH, C, H, H)).astype(dtype)
        w = rng.standard_normal((OC, C, 5, 5)).astype(dtype)
        b = rng.standard_normal(OC).astype(dtype)
        dy = rng.standard_normal((BATCH, OC, H - 4, H - 4)).astype(dtype)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))

        def t_bwd(mask, tx=tx, tw=tw, tdy=tdy, OC=OC):
            return torch.ops.aten.convolution_backward(
                tdy, tx, tw, [OC], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
            )

        out += [
            (f"{name} fwd",
             lambda x=x, w=w, b=b: conv.conv2d(x, w, b, ONE, ZERO, ONE),
             lambda tx=tx, tw=tw, tb=tb: F.conv2d(tx, tw, tb)),
            (f"{name} bwd data",
             lambda dy=dy, w=w, s=x.shape: conv.conv2d_backward_data(dy, w, s, ONE, ZERO, ONE),
             lambda t_bwd=t_bwd: t_bwd([True, False, False])),
            (f"{name} bwd weight+bias",
             lambda x=x, dy=dy, s=w.shape: (conv.conv2d_backward_weight(x, dy, s, ONE, ZERO, ONE),
                                            dy.sum(axis=(0, 2, 3))),
             lambda t_bwd=t_bwd: t_bwd([False, True, True])),
        ]
    for name, C, H in POOLS:
        # a permutation: no ties, so both libraries pick the same maxima
        x = (rng.permutation(BATCH * C * H * H).reshape(BATCH, C, H, H) / 1000).astype(dtype)
        y, am = pooling.max_pool2d(x, (2, 2), (2, 2), ZERO)
        dy = rng.standard_normal(y.shape).astype(dtype)
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        _, ti = F.max_pool2d(tx, 2, 2, return_indices=True)
        out += [
            (f"{name} max fwd",
             lambda x=x: pooling.max_pool2d(x, (2, 2), (2, 2), ZERO),
             lambda tx=tx: F.max_pool2d(tx, 2, 2, return_indices=True)),
            (f"{name} max bwd",
             lambda dy=dy, am=am, s=x.shape: pooling.max_pool2d_backward(
                 dy, am, s, (2, 2), (2, 2), ZERO),
             lambda tdy=tdy, tx=tx, ti=ti: torch.ops.aten.max_pool2d_with_indices_backward(
                 tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, ti)),
            (f"{name} avg fwd",
             lambda x=x: pooling.avg_pool2d(x, (2, 2), (2, 2), ZERO),
             lambda tx=tx: F.avg_pool2d(tx, 2, 2)),
        ]
    return out


THREAD_SETTINGS = [  # since 2026-12-01 dlx's kernels run on its own threads (threads.py)
    ("dlx rule: all cores, BLAS 1", {}),
    ("dlx on 1 thread", {"DLX_NUM_THREADS": "1"}),
    ("BLAS on 2 threads too", {"OPENBLAS_NUM_THREADS": "2"}),
]


def lenet_step_ms(steps=40):
    """(min, median) ms of a LeNet-5 training step: the Numba kernels and NumPy matmuls."""
    rng = np.random.default_rng(0)
    f32, B = np.float32, BATCH
    x = rng.standard_normal((B, 3, 32, 32)).astype(f32)
    w1, w2 = (rng.standard_normal(s).astype(f32) * 0.1 for s in ((6, 3, 5, 5), (16, 6, 5, 5)))
    b1, b2 = np.zeros(6, f32), np.zeros(16, f32)
    fcs = [rng.standard_normal(s).astype(f32) * 0.1 for s in ((120, 400), (84, 120), (10, 84))]
    pool = ((2, 2), (2, 2), ZERO)

    def step():
        a1 = conv.conv2d(x, w1, b1, ONE, ZERO, ONE)
        p1, i1 = pooling.max_pool2d(np.maximum(a1, 0), *pool)
        a2 = conv.conv2d(p1, w2, b2, ONE, ZERO, ONE)
        p2, i2 = pooling.max_pool2d(np.maximum(a2, 0), *pool)
        hs = [p2.reshape(B, -1)]
        for k, fc in enumerate(fcs):
            h = hs[-1] @ fc.T
            hs.append(np.maximum(h, 0) if k < 2 else h)
        d = hs[-1] / B
        for k in (2, 1, 0):
            fcs[k] -= 1e-4 * (d.T @ hs[k])
            d = d @ fcs[k]
            if k:
                d = d * (hs[k] > 0)
        d2 = pooling.max_pool2d_backward(d.reshape(p2.shape), i2, a2.shape, *pool) * (a2 > 0)
        d1 = conv.conv2d_backward_data(d2, w2, p1.shape, ONE, ZERO, ONE)
        w2[...] -= 1e-4 * conv.conv2d_backward_weight(p1, d2, w2.shape, ONE, ZERO, ONE)
        d1 = pooling.max_pool2d_backward(d1, i1, a1.shape, *pool) * (a1 > 0)
        w1[...] -= 1e-4 * conv.conv2d_backward_weight(x, d1, w1.shape, ONE, ZERO, ONE)

    return timeit(step, steps)


def compare_thread_settings():
    """Run ``lenet_step_ms`` in a fresh process per setting (thread pools start only once)."""
    for name, env in THREAD_SETTINGS:
        env = {**{k: v for k, v in os.environ.items()
                  if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "DLX_NUM_THREADS")},
               **env}
        out = subprocess.run([sys.executable, __file__, "--step-worker"], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        print(f"{name:38s} step {float(out[0]):6.2f} ms (median {float(out[1]):6.2f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", action="store_true", help="compare threading settings")
    parser.add_argument("--step-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_worker:
        threads.configure()
        print(*lenet_step_ms())
        return
    if args.threads:
        compare_thread_settings()
        return

    import torch

    threads.configure()  # the CPU backend's threading rule (BLAS on one thread)
    info = threads.threading_info()
    print(f"dlx: {info['threads']} threads, "
          f"BLAS: {info['blas']} {info['blas_threads']} thread(s); "
          f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"{'kernel':40s} {'dlx ms':>14s} {'torch ms':>14s} {'torch/dlx':>9s}")
    total = np.zeros(2)
    for name, dlx_fn, torch_fn in cases(np.dtype(args.dtype)):
        # one library at a time, with a pause, so neither's spinning workers slow the other
        ours = timeit(dlx_fn, args.repeat)
        time.sleep(0.05)
        theirs = timeit(torch_fn, args.repeat)
        time.sleep(0.05)
        if "avg" not in name:
            total += (ours[0], theirs[0])
        print(f"{name:40s} {ours[0]:6.3f} ({ours[1]:5.2f}) {theirs[0]:6.3f} ({theirs[1]:5.2f}) "
              f"{theirs[0] / ours[0]:9.2f}")
    print(f"{'sum (min ms; no avg pool)':40s} {total[0]:6.3f}         {total[1]:6.3f}         "
          f"{total[1] / total[0]:9.2f}")
    print("(min over repeats; median in parentheses)")


if __name__ == "__main__":
    main()
