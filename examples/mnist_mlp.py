"""MNIST with a fully connected network (the write-ups' MLP experiments), trained by dlx.fit.

    python examples/mnist_mlp.py --hidden 50 --epochs 20                      # 2-layer MLP
    python examples/mnist_mlp.py --hidden 370 115 50 --dropout 0.2 --epochs 40  # deep MLP

Images are flattened to 784 values, normalised with MNIST's mean and std; Adam with a
cosine learning-rate schedule. Writes OUT/model.npz, OUT/history.json and OUT/curves.png
(with matplotlib) and prints the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[50], help="hidden layer sizes")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default DLX_DATA_DIR)")
    ap.add_argument("--out", default="runs/mnist_mlp")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    import dlx
    from dlx import nn, optim, plots
    from dlx.data import MNIST, DataLoader
    from dlx.data import transforms as T
    from dlx.models import MLP

    dev = dlx.device(args.device)
    dlx.manual_seed(args.seed)
    norm = T.Normalize((0.1307,), (0.3081,))
    train = DataLoader(MNIST(root=args.data_dir, train=True), batch_size=args.batch_size,
                       shuffle=True, seed=args.seed, device=dev, transform=norm)
    test = DataLoader(MNIST(root=args.data_dir, train=False), batch_size=1000, device=dev,
                      transform=norm)
    sizes = [784, *args.hidden, 10]
    model = nn.Sequential(nn.Flatten(), MLP(sizes, nn.ReLU, dropout=args.dropout, device=dev))
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    os.makedirs(args.out, exist_ok=True)
    print(f"MLP {sizes}, dropout {args.dropout}, {args.epochs} epochs on {dev}")
    t0 = time.perf_counter()
    hist = dlx.fit(model, nn.CrossEntropyLoss(), opt, train, epochs=args.epochs, val_loader=test,
                   scheduler=sched, progress=not args.quiet,
                   callbacks=[dlx.Checkpoint(os.path.join(args.out, "model.npz"),
                                             meta={"sizes": sizes, "dropout": args.dropout})])
    wall = time.perf_counter() - t0
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump({**hist.to_dict(), "device": str(dev), "wall_time_s": wall, "sizes": sizes,
                   "dropout": args.dropout}, f, indent=1)
    if plots.have_matplotlib():
        plots.plot_curves(hist.to_dict(), os.path.join(args.out, "curves.png"),
                          title=f"MLP {sizes} on MNIST ({dev})")
    print(f"test accuracy {hist['val_accuracy'][-1]:.4f} after {args.epochs} epochs ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
