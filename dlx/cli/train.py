"""``dlx train``: train a classifier on MNIST or CIFAR-10, with a progress bar, a
checkpoint every epoch, ``history.json`` and loss/accuracy curves."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from dlx.cli import warmup
from dlx.cli.common import (
    MODELS,
    NORMALIZATION,
    DefaultsFormatter,
    UsageError,
    check_tta,
    checkpoint_meta,
    load_dataset,
    make_model,
    make_transforms,
    out_lock,
    parse_hidden,
)


def register(subparsers):
    t = subparsers.add_parser(
        "train", help="train a model on MNIST or CIFAR-10",
        formatter_class=DefaultsFormatter,
        epilog="Data parallel on N processes: mpiexec -n N dlx train ... (mpiexec from pip install "
               "-e \".[dist]\"). Each rank takes --batch-size images of every batch of N x "
               "--batch-size, so the run trains as one process with that batch; rank 0 prints "
               "and writes the files.")
    t.add_argument("model", choices=MODELS, help="lenet5 (convolutional), mlp (fully connected, "
                   "on the flattened images) or convnet (a small VGG-style net with BatchNorm)")
    t.add_argument("--hidden", default="256,128", help="mlp: hidden layer sizes")
    t.add_argument("--dataset", choices=sorted(NORMALIZATION), default="cifar10", help="data set")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE, else cpu)")
    t.add_argument("--epochs", type=int, default=10, help="epochs to train (in all, with --resume)")
    t.add_argument("--batch-size", type=int, default=128, help="images per step")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam (AdamW with --weight-decay) or sgd (Nesterov momentum 0.9)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 1e-3, or with --resume the checkpoint's)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: 0, or with --resume the checkpoint's)")
    t.add_argument("--schedule", choices=("none", "cosine", "onecycle"), default="none",
                   help="learning-rate schedule")
    t.add_argument("--augment", action="store_true", help="random crop (pad 4) + horizontal flip")
    t.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                   help="train against (1 - EPS) one-hot + EPS / classes")
    t.add_argument("--tta", action="store_true",
                   help="after training, also report the test accuracy with each image averaged "
                        "with its mirror image (cifar10)")
    t.add_argument("--data-dir", default=None, help="folder with mnist/ and cifar10/ "
                   "(default: DLX_DATA_DIR, else ~/.cache/dlx)")
    t.add_argument("--out", default=None, help="output folder (default: runs/MODEL)")
    t.add_argument("--seed", type=int, default=0, help="random seed (weights, order, augmentation)")
    t.add_argument("--resume", default=None, metavar="CKPT", help="continue from this checkpoint")
    t.add_argument("--graph", action=argparse.BooleanOptionalAction, default=False,
                   help="cuda: capture each training step into a CUDA graph and replay it per "
                        "batch (dlx.compile_step); other devices run eagerly (default: eager)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines (only the banner and the result)")
    t.set_defaults(func=run)
    return t


def make_optimizer(args, model, steps_per_epoch):
    """The optimizer (SGD with Nesterov momentum, Adam, or AdamW with weight decay) and the
    learning-rate schedule that ``args`` ask for."""
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


def _resume_settings(args) -> dict:
    """On --resume, --lr and --weight-decay given on the command line win over the
    checkpoint's, as a PyTorch user sets ``group["lr"]`` after ``optimizer.load_state_dict``
    to change it; left out, they are the checkpoint's (not the defaults). Returns the values
    to put into the restored optimizer's param groups (empty if none changes)."""
    header, meta = checkpoint_meta("dlx train", args.resume, args.dataset)
    if "optimizer" not in header:
        raise UsageError(f"dlx train: {args.resume} holds the weights alone, no optimizer state, "
                         f"so it cannot be resumed; train without --resume (a new run), or resume "
                         f"from a model.npz that dlx train wrote")
    if meta.get("architecture", args.model) != args.model:
        raise UsageError(f"dlx train: {args.resume} holds a {meta['architecture']} model; use "
                         f"dlx train {meta['architecture']} ... --resume {args.resume}")
    saved = meta.get("args") or {}
    if args.model == "mlp" and saved.get("hidden", args.hidden) != args.hidden:
        raise UsageError(f"dlx train: {args.resume} has hidden layers {saved['hidden']}; "
                         f"add --hidden {saved['hidden']}")
    changes = {}
    for name, default in (("lr", 1e-3), ("weight_decay", 0.0)):
        old = saved.get(name, default)
        if getattr(args, name) is None:
            setattr(args, name, old)
        elif getattr(args, name) != old:
            changes[name] = getattr(args, name)
    flag = " and ".join("--" + k.replace("_", "-") for k in changes)
    if changes and args.schedule != "none":
        raise UsageError(f"dlx train: {flag} cannot change on --resume with --schedule "
                         f"{args.schedule} (the restored schedule sets the learning rate); "
                         f"resume without {flag}, or start a new run")
    if "weight_decay" in changes and args.optimizer == "adam" and (changes["weight_decay"] == 0) \
            != (saved.get("weight_decay", 0.0) == 0):
        raise UsageError("dlx train: --weight-decay cannot switch between Adam and AdamW on "
                         "--resume; resume without --weight-decay, or start a new run")
    if "weight_decay" in changes:  # build the checkpoint's optimizer class, then change it
        args.weight_decay = saved.get("weight_decay", 0.0)
    return changes


def run(args) -> int:
    import dlx
    from dlx import distributed
    from dlx.data import DataLoader

    world = distributed.init()  # before the first array: ranks on one machine share its cores
    say = print if world.rank == 0 else (lambda *a, **k: None)
    shard = (world.rank, world.size) if world.size > 1 else None

    parse_hidden(args.hidden)  # a typo is reported before any data is read
    args.out = args.out or os.path.join("runs", args.model)
    changes = _resume_settings(args) if args.resume else {}
    if args.lr is None:
        args.lr = 1e-3
    if args.weight_decay is None:
        args.weight_decay = 0.0
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UsageError("dlx train: --epochs, --batch-size and --lr must be positive")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UsageError(f"dlx train: --label-smoothing must be in [0, 1), got {args.label_smoothing}")
    check_tta("dlx train", args, args.dataset)
    dev = dlx.device(args.device)
    # a fresh install compiles the CPU kernels in a second process while the data is read
    warm = warmup.start(dev, world.size, args.model, args.dataset, args.hidden, args.augment)
    dlx.manual_seed(args.seed)
    train_set = load_dataset(args.dataset, True, args.data_dir)
    test_set = load_dataset(args.dataset, False, args.data_dir)
    model = make_model(args.model, args.dataset, dev, parse_hidden(args.hidden))
    distributed.broadcast_parameters(model)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=False,
                        seed=args.seed, device=dev, transform=make_transforms(args.dataset, args.augment),
                        shard=shard)
    val = DataLoader(test_set, batch_size=1000, device=dev, transform=make_transforms(args.dataset, False),
                     shard=shard)
    opt, sched = make_optimizer(args, model, len(loader))
    start, history = 0, None
    if args.resume:
        meta = dlx.load(args.resume, model, opt)
        start, history = int(meta.get("epoch", 0)), meta.get("history")
        if sched is not None and meta.get("scheduler"):
            sched.load_state_dict(meta["scheduler"])
        for group in opt.param_groups:
            group.update(changes)
        for name, value in changes.items():
            setattr(args, name, value)
        changed = "".join(f", {k.replace('_', ' ')} now {v}" for k, v in changes.items())
        say(f"resumed from {args.resume} after epoch {start}{changed}")
        if start >= args.epochs:
            say(f"nothing to do: {args.resume} already has {start} of {args.epochs} epochs "
                f"(raise --epochs to train further); nothing was written")
            return 0
    os.makedirs(args.out, exist_ok=True)
    with out_lock(args.out, "dlx train") if world.rank == 0 else contextlib.nullcontext():
        return _train(args, world, say, dev, model, opt, sched, loader, val, train_set, test_set,
                      start, history, warm)


def _train(args, world, say, dev, model, opt, sched, loader, val, train_set, test_set, start,
           history, warm=None) -> int:
    """Train, checkpointing into --out, then write history.json and curves.png there."""
    import dlx

    ckpt_path = os.path.join(args.out, "model.npz")
    meta = {"architecture": args.model, "dataset": args.dataset, "classes": list(train_set.classes),
            "args": {k: v for k, v in vars(args).items() if k != "func"}}
    batch = (f"batch {args.batch_size}" if world.size == 1 else
             f"{world.size} ranks x batch {args.batch_size} = batch {world.size * args.batch_size}")
    say(f"dlx {dlx.__version__}: training {args.model} on {args.dataset} "
        f"({len(train_set)} train / {len(test_set)} test images), device {dev}, dtype float32, "
        f"{batch}, {args.optimizer} lr {args.lr}"
        + (f" weight decay {args.weight_decay}" if args.weight_decay else "")
        + (", augmented" if args.augment else ""))
    warmup.finish(warm, (lambda *a: None) if args.quiet else say)
    t0 = time.perf_counter()
    hist = dlx.fit(model, dlx.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), opt, loader,
                   epochs=args.epochs, val_loader=val, scheduler=sched,
                   callbacks=[dlx.Checkpoint(ckpt_path, meta=meta)], progress=not args.quiet,
                   initial_epoch=start, history=history, graph=args.graph)
    elapsed = time.perf_counter() - t0
    record = {**hist.to_dict(), "device": str(dev), "wall_time_s": elapsed}
    if args.tta and len(hist):
        tta = dlx.evaluate(model, dlx.nn.CrossEntropyLoss(), val, flip_tta=True)
        record["test_accuracy_flip_tta"] = tta["accuracy"]
    if world.rank != 0:  # rank 0 writes the files and prints
        return 0
    if world.size > 1:
        record["ranks"] = world.size
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
        n = hist["epoch"][-1]
        print(f"test accuracy {hist['val_accuracy'][-1]:.4f} after {n} epoch{'s' * (n != 1)} "
              f"({elapsed:.0f} s); wrote {args.out}/model.npz, history.json"
              + (", curves.png" if plots.have_matplotlib() else ""))
        if args.tta:
            print(f"test accuracy {record['test_accuracy_flip_tta']:.4f} with each image averaged "
                  "with its mirror image (--tta)")
    return 0
