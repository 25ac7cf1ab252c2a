"""``dlx eval``: the test accuracy of a checkpoint written by ``dlx train``, and its
confusion matrix."""

from __future__ import annotations

import os

from dlx.cli.common import (
    NORMALIZATION,
    UsageError,
    check_tta,
    checkpoint_meta,
    load_dataset,
    make_transforms,
    model_for,
)


def register(subparsers):
    e = subparsers.add_parser("eval", help="test accuracy and a confusion matrix for a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=sorted(NORMALIZATION), default=None)
    e.add_argument("--device", default=None)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--tta", action="store_true",
                   help="average each image's prediction with its mirror image's (cifar10)")
    e.add_argument("--out", default=None, help="confusion-matrix PNG (default: beside CKPT)")
    e.set_defaults(func=run)
    return e


def run(args) -> int:
    import numpy as np

    import dlx
    from dlx._grad_mode import no_grad
    from dlx.data import DataLoader
    from dlx.training import flip_averaged_log_probs

    _, meta = checkpoint_meta("dlx eval", args.checkpoint, args.dataset)  # the header alone
    dataset = args.dataset or meta.get("dataset")
    if dataset not in NORMALIZATION:
        raise UsageError("dlx eval: give --dataset (cifar10 or mnist); the checkpoint does not say")
    dev = dlx.device(args.device)
    model = model_for("dlx eval", args.checkpoint, meta, dataset, dev)
    check_tta("dlx eval", args, dataset)
    dlx.load(args.checkpoint, model, restore_rng=False)  # the arrays, read once
    test_set = load_dataset(dataset, False, args.data_dir)
    loader = DataLoader(test_set, batch_size=args.batch_size, device=dev,
                        transform=make_transforms(dataset, False))
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        with no_grad():
            out = flip_averaged_log_probs(model, x) if args.tta else model(x)
        preds.append(dlx.to_numpy(dlx.get_namespace(x).argmax(out, axis=1)))
        labels.append(dlx.to_numpy(y))
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    acc = float((preds == labels).mean())
    how = ", each image averaged with its mirror image" if args.tta else ""
    print(f"{args.checkpoint}: test accuracy {acc:.4f} on {len(labels)} {dataset} images ({dev}{how})")
    from dlx import plots

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "confusion.png")
    if plots.have_matplotlib():
        counts = plots.confusion_matrix(labels, preds, len(test_set.classes))
        plots.plot_confusion(counts, test_set.classes, out,
                             title=f"{dataset} test set, accuracy {acc:.2%}"
                             + (" (each image averaged with its mirror)" if args.tta else ""))
        print(f"wrote {out}")
    else:
        print("confusion matrix skipped: matplotlib is not installed (pip install \"dlx[plots]\")")
    return 0
