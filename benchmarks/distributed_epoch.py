"""Data parallelism on this machine's cores: one LeNet-5 CIFAR-10 epoch (Adam, global batch
128) with 1 rank x 2 threads against 2 ranks x 1 thread each (``mpiexec -n 2``), in
alternating rounds; the all-reduce time of every step (which includes waiting for the slower
rank) and its share of the step, and the all-reduce alone (200 calls with the ranks in step).

    python benchmarks/distributed_epoch.py --data-dir .data [--rounds 2] [--json X.json]

Needs ``pip install -e ".[dist]"`` (mpi4py and the mpich wheel's mpiexec) and the official
CIFAR-10 archive in DATA_DIR/cifar10 (see the README's Data section). The two set-ups
process the same batches in the same order (the sharded loader), so the figures compare
only how the cores are used. The step time excludes the first 5 steps (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

GLOBAL_BATCH = 128


def worker(data_dir: str, steps: int | None) -> dict:
    import numpy as np

    import dlx
    from dlx import distributed as dist
    from dlx import nn, optim
    from dlx.data import CIFAR10, DataLoader
    from dlx.data.transforms import Normalize
    from dlx.models import LeNet5

    world = dist.init()
    dlx.manual_seed(0)
    model = LeNet5()
    dist.broadcast_parameters(model)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    train = CIFAR10(root=data_dir, train=True)
    loader = DataLoader(train, GLOBAL_BATCH // world.size, shuffle=True, seed=0,
                        transform=Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
                        shard=(world.rank, world.size) if world.size > 1 else None)
    step_s, reduce_s = [], []
    dist.barrier()  # the ranks start the epoch together (loading the data set took each its time)
    t_epoch = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())
        t1 = time.perf_counter()
        dist.allreduce_gradients(model)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        float(loss)
        step_s.append(time.perf_counter() - t0)
        reduce_s.append(t2 - t1)
        if steps is not None and i + 1 >= steps:
            break
    epoch = time.perf_counter() - t_epoch
    # the all-reduce alone, ranks in step: its transfer cost without the wait for a slower rank
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(200):
        dist.allreduce_gradients(model)
    alone = (time.perf_counter() - t0) / 200
    n = len(step_s)
    out = {"ranks": world.size, "threads_per_rank": int(os.environ.get("DLX_NUM_THREADS", 0)) or None,
           "steps": n, "epoch_s": epoch, "images_per_s": n * GLOBAL_BATCH / epoch,
           "step_ms_median": 1e3 * float(np.median(step_s[5:])),
           "allreduce_ms_median": 1e3 * float(np.median(reduce_s[5:])),
           "allreduce_share": float(np.sum(reduce_s[5:]) / np.sum(step_s[5:])),
           "allreduce_alone_us": 1e6 * alone}
    from dlx.backends.cpu.threads import threading_info

    out["threads"] = threading_info()["threads"]
    return out if world.rank == 0 else {}


def _run(cmd, env=None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DLX_DATA_DIR"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="stop each run after this many steps")
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        out = worker(args.data_dir, args.steps)
        if out:  # rank 0 only
            print(json.dumps(out), flush=True)
        return 0
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        print('mpiexec not found: pip install -e ".[dist]"', file=sys.stderr)
        return 2
    me = [sys.executable, __file__, "--worker", "--data-dir", args.data_dir]
    if args.steps:
        me += ["--steps", str(args.steps)]
    env = {k: v for k, v in os.environ.items() if k != "DLX_NUM_THREADS"}
    load_before = os.getloadavg()
    runs = {"1 rank x 2 threads": [], "2 ranks x 1 thread": []}
    for _ in range(args.rounds):
        runs["1 rank x 2 threads"].append(_run(me, env))
        runs["2 ranks x 1 thread"].append(_run([mpiexec, "-n", "2", *me], env))
    load_after = os.getloadavg()
    best = {k: min((r for r in v if "epoch_s" in r), key=lambda r: r["epoch_s"], default=v[0])
            for k, v in runs.items()}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_before": load_before, "load_after": load_after, "rounds": runs, "best": best}
    one, two = best["1 rank x 2 threads"], best["2 ranks x 1 thread"]
    print(f"LeNet-5, CIFAR-10, Adam, global batch {GLOBAL_BATCH}; load {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    for name, r in best.items():
        if "error" in r:
            print(f"  {name}: not run: {r['error']}")
            continue
        print(f"  {name}: epoch {r['epoch_s']:.2f} s ({r['images_per_s']:.0f} images/s), step "
              f"{r['step_ms_median']:.2f} ms, all-reduce {r['allreduce_ms_median'] * 1e3:.0f} us "
              f"({100 * r['allreduce_share']:.2f} % of the step, waiting for the other rank "
              f"included; alone {r['allreduce_alone_us']:.0f} us); rounds: "
              + ", ".join(f"{x.get('epoch_s', float('nan')):.2f} s" for x in runs[name]))
    if "epoch_s" in one and "epoch_s" in two:
        result["throughput_2_ranks_over_1"] = one["epoch_s"] / two["epoch_s"]
        print(f"  2 ranks / 1 rank throughput: {result['throughput_2_ranks_over_1']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
