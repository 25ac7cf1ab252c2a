"""Data parallelism on paper: when does the gradient all-reduce dominate a step?

    python benchmarks/scaling_model.py [--allreduce-json RESULTS.json] > table.md

Ring all-reduce of S bytes over N ranks (each rank sends and receives 2 (N-1)/N S in
2 (N-1) messages): T(N) = 2 (N-1) alpha + 2 (N-1)/N S / beta. Weak scaling (the batch per
rank fixed), a step costs its compute C plus T without overlap; with the all-reduce
overlapped with the backward pass in buckets (as PyTorch DDP does) about
F + max(B, T) + O, with forward F = C/3, backward B = 2C/3 and the optimizer O ~ 0. Parallel
efficiency is C / step.

Inputs. Gradient sizes are counted from dlx.models (float32). Step times: the CPU ones
measured on this 2-core VM (benchmarks/results/2026-11-30-cpu-issue10.md for LeNet-5 at
batch 128; the DCGAN's from issue 12's table, 2026-11-22, batch 64), the H100 ones from
benchmarks/results/2026-11-22-h100.md (dlx eager; the 0.44 ms GPU-busy time of a step is
what a captured step would cost). The networks' alpha and beta are typical published
figures, not measurements: 10 Gbit/s Ethernet (TCP) 25 us, 1.25 GB/s; 100 Gbit/s RDMA
(InfiniBand/RoCE) 3 us, 12.5 GB/s; NVLink within an H100 node (NCCL bus bandwidth)
5 us, 300 GB/s. The one measured all-reduce here (two ranks on this VM, shared memory,
LeNet-5's packed gradients) is quoted beside the table, not fitted into it.
"""

from __future__ import annotations

import argparse
import json

NETWORKS = {  # name: (alpha seconds, beta bytes/s)
    "10 Gbit/s Ethernet": (25e-6, 1.25e9),
    "100 Gbit/s RDMA": (3e-6, 12.5e9),
    "NVLink (H100 node)": (5e-6, 300e9),
}
RANKS = (2, 4, 8, 16, 32, 64)


def gradient_bytes() -> dict:
    from dlx.models import DCGANDiscriminator, DCGANGenerator, LeNet5

    count = {type(m).__name__: sum(p.data.size for p in m.parameters())
             for m in (LeNet5(), DCGANGenerator(), DCGANDiscriminator())}
    return {"LeNet-5": [4 * count["LeNet5"]],  # one all-reduce a step; the DCGAN two (D, then G)
            "DCGAN": [4 * count["DCGANDiscriminator"], 4 * count["DCGANGenerator"]]}


STEPS = {  # model: {where: (step seconds, source)}
    "LeNet-5": {"CPU, 2 cores (batch 128)": (9.26e-3, "measured 2026-11-30"),
                "H100, dlx eager (batch 128)": (2.8e-3, "2026-11-22-h100.md, best call"),
                "H100, GPU busy (batch 128)": (0.44e-3, "PyTorch's kernels, 2026-11-22-h100.md")},
    "DCGAN": {"CPU, 2 cores (batch 64)": (193e-3, "issue 12's table, 2026-11-22"),
              "H100, dlx eager (batch 64)": (5.3e-3, "5 s / 937 steps, 2026-11-22-h100.md")},
}


def ring(n: int, size: float, alpha: float, beta: float) -> float:
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allreduce-json", help="benchmarks/distributed_epoch.py's JSON, to quote "
                                             "the all-reduce measured on this machine")
    args = ap.parse_args()
    sizes = gradient_bytes()
    print("| model | gradients | network | " + " | ".join(f"N={n}" for n in RANKS) + " |")
    print("|---|---|---|" + "---|" * len(RANKS))
    for model, parts in sizes.items():
        for net, (alpha, beta) in NETWORKS.items():
            times = [sum(ring(n, s, alpha, beta) for s in parts) for n in RANKS]
            mb = sum(parts) / 1e6
            print(f"| {model} | {mb:.2f} MB | {net} | " + " | ".join(f"{1e3 * t:.3f} ms" for t in times)
                  + " |")
    print()
    print("Parallel efficiency (compute / step), no overlap -> bucketed overlap with backward:")
    print()
    print("| model | step (where, source) | network | " + " | ".join(f"N={n}" for n in RANKS) + " |")
    print("|---|---|---|" + "---|" * len(RANKS))
    for model, parts in sizes.items():
        for where, (c, source) in STEPS[model].items():
            for net, (alpha, beta) in NETWORKS.items():
                if "CPU" in where and net.startswith("NVLink"):
                    continue
                cells = []
                for n in RANKS:
                    t = sum(ring(n, s, alpha, beta) for s in parts)
                    plain = c / (c + t)
                    overlap = c / (c / 3 + max(2 * c / 3, t))
                    cells.append(f"{plain:.2f} -> {overlap:.2f}")
                print(f"| {model} | {1e3 * c:.2f} ms ({where}; {source}) | {net} | "
                      + " | ".join(cells) + " |")
    if args.allreduce_json:
        with open(args.allreduce_json) as f:
            best = json.load(f)["best"]["2 ranks x 1 thread"]
        print(f"\nMeasured here: 2 ranks, shared memory, {sizes['LeNet-5'][0] / 1e3:.0f} kB: "
              f"{best['allreduce_ms_median'] * 1e3:.0f} us a step (median, waiting for the other "
              f"rank included), {100 * best['allreduce_share']:.2f} % of the step; alone, the ranks "
              f"in step, {best['allreduce_alone_us']:.0f} us (packing and unpacking included).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
