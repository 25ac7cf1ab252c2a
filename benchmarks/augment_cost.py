"""Is the data path a bottleneck? LeNet-5 training steps on CIFAR-10-shaped data with and
without augmentation (random crop with padding 4 + horizontal flip, on the device).

    python benchmarks/augment_cost.py [--device cpu] [--batches 100] [--json OUT]

Uses the real CIFAR-10 training set when ``--data-dir`` (or DLX_DATA_DIR) has it, else
random uint8 images of the same shape (the cost does not depend on the pixels). Reports,
for each setting, training images/s over ``--batches`` batches after warm-up, the loader
alone (batches/s: gather + uint8->float + transforms, no model), and the ratio
with/without augmentation. The settings run in alternating rounds (the machine is a shared
VM); each figure is the median over rounds. Target (issue 4): an augmented epoch costs
<= 1.1x a plain one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def measure(dev, data, transform, args) -> dict:
    """Loader-alone and full-training time per batch for one transform setting."""
    import dlx
    from dlx import nn, optim
    from dlx.data import DataLoader
    from dlx.models import LeNet5

    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, seed=0, device=dev,
                        transform=transform)
    it = iter(loader)
    for _ in range(5):
        next(it)
    dev.synchronize()
    t = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    dev.synchronize()
    loader_s = time.perf_counter() - t
    dlx.manual_seed(0)
    model = LeNet5(device=dev)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    it = iter(loader)
    times = []
    for i in range(args.batches + 5):
        t = time.perf_counter()
        x, y = next(it)
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        dev.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - t)
    step_s = sum(times)
    return {
        "loader_batches_per_s": args.batches / loader_s,
        "loader_ms_per_batch": 1e3 * loader_s / args.batches,
        "train_images_per_s": args.batches * args.batch_size / step_s,
        "train_ms_per_batch": 1e3 * step_s / args.batches,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-dir", default=os.environ.get("DLX_DATA_DIR"))
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/augmented runs")
    ap.add_argument("--json")
    args = ap.parse_args()

    import dlx
    from dlx.data import CIFAR10, ArrayDataset
    from dlx.data import transforms as T

    dev = dlx.device(args.device)
    try:
        data = CIFAR10(root=args.data_dir, train=True)
        source = "CIFAR-10 train set"
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        data = ArrayDataset(rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 10, 50000))
        source = "random uint8 images, CIFAR-10 shaped"
    norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    settings = {
        "plain": T.Compose([norm]),
        "augmented": T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), norm]),
    }
    results = {"device": str(dev), "data": source, "batch_size": args.batch_size,
               "batches": args.batches, "rounds": args.rounds,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    runs = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, transform in settings.items():
            runs[name].append(measure(dev, data, transform, args))
    for name, rs in runs.items():
        rs.sort(key=lambda r: r["train_ms_per_batch"])
        results[name] = dict(rs[len(rs) // 2])
        results[name]["rounds_train_ms_per_batch"] = [round(r["train_ms_per_batch"], 2) for r in rs]
    results["augmented_over_plain_epoch_time"] = (
        results["augmented"]["train_ms_per_batch"] / results["plain"]["train_ms_per_batch"])
    print(f"LeNet-5 + data loader on {dev}, batch {args.batch_size}, {source}")
    for name in settings:
        r = results[name]
        print(f"  {name:9s}: loader alone {r['loader_batches_per_s']:7.1f} batches/s "
              f"({r['loader_ms_per_batch']:.2f} ms/batch); training {r['train_images_per_s']:6.0f} "
              f"images/s ({r['train_ms_per_batch']:.1f} ms/batch; rounds "
              f"{r['rounds_train_ms_per_batch']})")
    print(f"  augmented / plain time per batch: {results['augmented_over_plain_epoch_time']:.3f}x"
          " (target <= 1.1x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
