"""The same CNN trained with SGD, SGD + momentum, RMSprop, Adagrad and Adam: loss curves
in one plot (the write-ups' optimizer comparison).

    python examples/optimizer_comparison.py --data-dir .data --epochs 2 --limit 20000

Every run starts from the same initial weights (one seed) and sees the same batches in the
same order; only the optimizer differs. The training loss is recorded every ``--every``
steps. Writes OUT/optimizers.png and OUT/optimizers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

OPTIMIZERS = {  # name -> (class name, keyword arguments): common textbook settings
    "SGD": ("SGD", {"lr": 0.05}),
    "SGD + momentum 0.9": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "RMSprop": ("RMSprop", {"lr": 1e-3}),
    "Adagrad": ("Adagrad", {"lr": 0.01}),
    "Adam": ("Adam", {"lr": 1e-3}),
}


def run(name, make_model, loader, epochs, every):
    import dlx
    from dlx import nn, optim

    cls, kwargs = OPTIMIZERS[name]
    model = make_model()
    opt = getattr(optim, cls)(model.parameters(), **kwargs)
    loss_fn = nn.CrossEntropyLoss()
    loader.set_epoch(0)
    steps, losses, window = [], [], []
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            window.append(float(dlx.to_numpy(loss_fn(model(x), y))))
            model.backward_params(loss_fn.backward())
            opt.step()
            opt.zero_grad()
            step += 1
            if step % every == 0:
                steps.append(step)
                losses.append(sum(window) / len(window))
                window = []
    return {"steps": steps, "loss": losses, "optimizer": cls, **kwargs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=20000, help="training images used (0: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--every", type=int, default=20, help="steps per plotted point")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/optimizers")
    args = ap.parse_args(argv)

    import dlx
    from dlx import plots
    from dlx.data import MNIST, ArrayDataset, DataLoader
    from dlx.data import transforms as T
    from dlx.models import LeNet5

    dev = dlx.device(args.device)
    mnist = MNIST(root=args.data_dir, train=True)
    n = len(mnist.targets) if args.limit <= 0 else min(args.limit, len(mnist.targets))
    data = ArrayDataset(mnist.data[:n], mnist.targets[:n])
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        device=dev, transform=T.Normalize((0.1307,), (0.3081,)))
    dlx.manual_seed(args.seed)
    first = LeNet5(in_channels=1, padding=2, device=dev)
    initial = {k: dlx.to_numpy(v).copy() for k, v in first.state_dict().items()}

    def make_model():  # every optimizer starts from the same weights
        model = LeNet5(in_channels=1, padding=2, device=dev)
        model.load_state_dict(initial)
        return model

    results = {}
    for name in OPTIMIZERS:
        results[name] = run(name, make_model, loader, args.epochs, args.every)
        print(f"{name:20s} final loss {results[name]['loss'][-1]:.4f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "optimizers.json"), "w") as f:
        json.dump({"images": n, "epochs": args.epochs, "batch_size": args.batch_size,
                   "device": str(dev), "runs": results}, f, indent=1)
    if plots.have_matplotlib():
        plt = plots._pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in results.items():
            ax.plot(r["steps"], r["loss"], label=name)
        ax.set_xlabel(f"training step (batch {args.batch_size})")
        ax.set_ylabel(f"training loss (cross-entropy, mean of {args.every} steps)")
        ax.set_yscale("log")
        ax.set_title(f"LeNet-5 on MNIST ({n} images, {args.epochs} epochs): one start, five optimizers")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        plots.save_figure(fig, os.path.join(args.out, "optimizers.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
