"""The ``dlx`` command: ``dlx info``, ``dlx train``, ``dlx eval``, ``dlx gan``, ``dlx digits``.

Errors a user can make (wrong arguments, a missing data set, an unreadable checkpoint,
a device that isn't there) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

NORMALIZATION = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}
MODELS = ("lenet5",)


class UsageError(Exception):
    """A mistake in how the command was called."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---- dlx info ----------------------------------------------------------------------------
def info() -> dict:
    """What ``dlx info`` prints, as a dict (tests use it)."""
    import dlx

    out = {
        "dlx": dlx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "array-api-strict": _version("array-api-strict"),
        "cupy": next((v for v in (_version(d) for d in ("cupy-cuda12x", "cupy-cuda13x", "cupy"))
                      if v != "not installed"), "not installed"),
        "torch (optional, tests only)": _version("torch"),
        "default device": str(dlx.get_default_device()),
    }
    devices = ["cpu"]
    try:
        dlx.device("strict")
        devices.append("strict")
    except ImportError:
        pass
    try:
        from dlx.backends.cuda import cuda_info

        gpu = cuda_info()
    except ImportError as e:  # the CUDA backend module itself is missing
        gpu = {"error": str(e)}
    if "error" not in gpu:
        devices.append("cuda")
    out["devices"] = ", ".join(devices)
    out["cuda"] = gpu
    from dlx.backends.cpu.threads import threading_info

    out["cpu threads"] = threading_info()
    return out


def _print_info(data: dict, indent: str = "") -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_info(value, indent + "  ")
        else:
            print(f"{indent}{key.ljust(width)}  {value}")


# ---- data and models ------------------------------------------------------------------------
def _dataset(name: str, train: bool, data_dir):
    from dlx import data

    cls = {"cifar10": data.CIFAR10, "mnist": data.MNIST}[name]
    return cls(root=data_dir, train=train)


def _transforms(name: str, augment: bool):
    from dlx.data import transforms as T

    steps = []
    if augment:
        size = 32 if name == "cifar10" else 28
        steps.append(T.RandomCrop(size, padding=4 if name == "cifar10" else 2))
        if name == "cifar10":  # digits are not mirror-symmetric
            steps.append(T.RandomHorizontalFlip())
    steps.append(T.Normalize(*NORMALIZATION[name]))
    return T.Compose(steps)


def _model(name: str, dataset: str, device):
    from dlx.models import LeNet5

    if name != "lenet5":
        raise UsageError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    if dataset == "mnist":
        return LeNet5(in_channels=1, padding=2, device=device)
    return LeNet5(in_channels=3, device=device)


def _optimizer(args, model, steps_per_epoch):
    from dlx import optim

    params = model.parameters()
    if args.optimizer == "sgd":
        opt = optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True,
                        weight_decay=args.weight_decay)
    else:
        cls = optim.AdamW if args.weight_decay else optim.Adam
        opt = cls(params, lr=args.lr, weight_decay=args.weight_decay)
    sched = None
    if args.schedule == "cosine":
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    elif args.schedule == "onecycle":
        sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                              steps_per_epoch=steps_per_epoch)
    return opt, sched


# ---- dlx train ------------------------------------------------------------------------------
def train(args) -> int:
    import dlx
    from dlx.data import DataLoader

    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UsageError("dlx train: --epochs, --batch-size and --lr must be positive")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UsageError(f"dlx train: --label-smoothing must be in [0, 1), got {args.label_smoothing}")
    _check_tta("dlx train", args, args.dataset)
    dev = dlx.device(args.device)
    dlx.manual_seed(args.seed)
    train_set = _dataset(args.dataset, True, args.data_dir)
    test_set = _dataset(args.dataset, False, args.data_dir)
    model = _model(args.model, args.dataset, dev)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=False,
                        seed=args.seed, device=dev, transform=_transforms(args.dataset, args.augment))
    val = DataLoader(test_set, batch_size=1000, device=dev, transform=_transforms(args.dataset, False))
    opt, sched = _optimizer(args, model, len(loader))
    start, history = 0, None
    if args.resume:
        meta = dlx.load(args.resume, model, opt)
        start, history = int(meta.get("epoch", 0)), meta.get("history")
        if sched is not None and meta.get("scheduler"):
            sched.load_state_dict(meta["scheduler"])
        print(f"resumed from {args.resume} after epoch {start}")
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "model.npz")
    meta = {"architecture": args.model, "dataset": args.dataset, "classes": list(train_set.classes),
            "args": {k: v for k, v in vars(args).items() if k != "func"}}
    print(f"dlx {dlx.__version__}: training {args.model} on {args.dataset} "
          f"({len(train_set)} train / {len(test_set)} test images), device {dev}, dtype float32, "
          f"batch {args.batch_size}, {args.optimizer} lr {args.lr}"
          + (", augmented" if args.augment else ""))
    t0 = time.perf_counter()
    hist = dlx.fit(model, dlx.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), opt, loader,
                   epochs=args.epochs, val_loader=val, scheduler=sched,
                   callbacks=[dlx.Checkpoint(ckpt_path, meta=meta)], progress=not args.quiet,
                   initial_epoch=start, history=history)
    elapsed = time.perf_counter() - t0
    record = {**hist.to_dict(), "device": str(dev), "wall_time_s": elapsed}
    if args.tta and len(hist):
        tta = dlx.evaluate(model, dlx.nn.CrossEntropyLoss(), val, flip_tta=True)
        record["test_accuracy_flip_tta"] = tta["accuracy"]
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(record, f, indent=1)
    from dlx import plots

    if plots.have_matplotlib() and len(hist):
        plots.plot_curves(hist.to_dict(), os.path.join(args.out, "curves.png"),
                          title=f"{args.model} on {args.dataset} ({dev})" + (
                              f"; loss with label smoothing {args.label_smoothing}"
                              if args.label_smoothing else ""))
    elif len(hist):
        print("curves.png skipped: matplotlib is not installed (pip install \"dlx[plots]\")")
    if len(hist):
        print(f"test accuracy {hist['val_accuracy'][-1]:.4f} after {hist['epoch'][-1]} epochs "
              f"({elapsed:.0f} s); wrote {args.out}/model.npz, history.json"
              + (", curves.png" if plots.have_matplotlib() else ""))
        if args.tta:
            print(f"test accuracy {record['test_accuracy_flip_tta']:.4f} with each image averaged "
                  "with its mirror image (--tta)")
    return 0


def _check_tta(prog, args, dataset):
    if args.tta and dataset != "cifar10":
        raise UsageError(f"{prog}: --tta averages each image with its mirror image, which is only right for "
                         f"cifar10 (a mirrored {dataset} digit is not the same digit); drop --tta")


# ---- dlx eval -------------------------------------------------------------------------------
def evaluate(args) -> int:
    import numpy as np

    import dlx
    from dlx.data import DataLoader
    from dlx.serialization import read
    from dlx.training import flip_averaged_log_probs

    header, _ = read(args.checkpoint)
    meta = header.get("meta", {})
    dataset = args.dataset or meta.get("dataset")
    if dataset not in NORMALIZATION:
        raise UsageError("dlx eval: give --dataset (cifar10 or mnist); the checkpoint does not say")
    dev = dlx.device(args.device)
    model = _model(meta.get("architecture", "lenet5"), dataset, dev)
    _check_tta("dlx eval", args, dataset)
    dlx.load(args.checkpoint, model, restore_rng=False)
    test_set = _dataset(dataset, False, args.data_dir)
    loader = DataLoader(test_set, batch_size=args.batch_size, device=dev,
                        transform=_transforms(dataset, False))
    model.eval()
    preds, labels = [], []
    for x, y in loader:
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


# ---- dlx digits -----------------------------------------------------------------------------
def digits(args) -> int:
    """Find and read the handwritten digits in a picture; write it annotated."""
    import dlx
    from dlx import digits as D
    from dlx import plots

    try:  # Pillow reads the picture, matplotlib draws the answer: both come with dlx[plots]
        if not plots.have_matplotlib():
            raise ImportError(f"drawing the annotated image needs matplotlib: {D.PLOTS_HINT}")
        image = D.load_image(args.image)
    except ImportError as e:
        print(f"dlx: error: {e}", file=sys.stderr)
        return 1
    dev = dlx.device(args.device)
    model = D.load_mnist_model(args.model, device=dev)
    t0 = time.perf_counter()
    results = D.read_digits(image, model, invert=args.invert)
    elapsed = time.perf_counter() - t0
    out = args.out or f"{os.path.splitext(args.image)[0]}_digits.png"
    D.annotate(image, results, out)
    print(f"{args.image}: {len(results)} digit{'s' * (len(results) != 1)} found "
          f"({image.shape[1]}x{image.shape[0]} px, {elapsed:.2f} s on {dev})")
    for line in D.lines(results):
        print("  " + " ".join(str(d) for _, d, _ in line))
    unsure = [f"{d} ({c:.2f})" for _, d, c in results if c < 0.9]
    if unsure:
        print(f"  unsure (confidence < 0.9): {', '.join(unsure)}")
    print(f"wrote {out}")
    return 0


# ---- entry point ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlx", description="dlx: a readable deep-learning framework.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("info", help="versions, devices, GPU and CPU threading")

    t = sub.add_parser("train", help="train a model on MNIST or CIFAR-10")
    t.add_argument("model", choices=MODELS)
    t.add_argument("--dataset", choices=sorted(NORMALIZATION), default="cifar10")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", choices=("none", "cosine", "onecycle"), default="none")
    t.add_argument("--augment", action="store_true", help="random crop (pad 4) + horizontal flip")
    t.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                   help="train against (1 - EPS) one-hot + EPS / classes (default 0)")
    t.add_argument("--tta", action="store_true",
                   help="after training, also report the test accuracy with each image averaged "
                        "with its mirror image (cifar10)")
    t.add_argument("--data-dir", default=None, help="folder with mnist/ and cifar10/ "
                   "(default: DLX_DATA_DIR, else ~/.cache/dlx)")
    t.add_argument("--out", default="runs/lenet5", help="output folder (default runs/lenet5)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", default=None, metavar="CKPT", help="continue from this checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="test accuracy and a confusion matrix for a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=sorted(NORMALIZATION), default=None)
    e.add_argument("--device", default=None)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--tta", action="store_true",
                   help="average each image's prediction with its mirror image's (cifar10)")
    e.add_argument("--out", default=None, help="confusion-matrix PNG (default: beside CKPT)")

    d = sub.add_parser("digits", help="find and read handwritten digits in a picture")
    d.add_argument("image", help="PNG, JPEG, ... of dark digits on light paper")
    d.add_argument("--model", required=True, metavar="CKPT",
                   help="an MNIST LeNet-5 checkpoint (dlx train lenet5 --dataset mnist)")
    d.add_argument("--out", default=None, help="annotated PNG (default: IMAGE_digits.png beside IMAGE)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    d.add_argument("--invert", action="store_true", help="light digits on a dark ground")

    from dlx.gan import add_gan_parser

    add_gan_parser(sub)
    return parser


def main(argv=None) -> int:
    from dlx import DeviceError

    try:
        args = build_parser().parse_args(argv)
        if args.command == "info":
            _print_info(info())
            return 0
        if args.command == "train":
            return train(args)
        if args.command == "eval":
            return evaluate(args)
        if args.command == "gan":
            return args.func(args)
        if args.command == "digits":
            return digits(args)
        build_parser().print_help()
        return 2
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, DeviceError, FloatingPointError, OSError) as e:
        print("dlx: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dlx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m dlx.cli`: run the imported module's main, so that
    from dlx.cli import main as _main  # exceptions raised elsewhere match its except clauses

    sys.exit(_main())
