"""``dlx gan``: train a GAN on MNIST (``dlx.models`` DCGAN or MLP, ``dlx.training.train_gan``),
and after every epoch write a sample grid, scores and checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from dlx.cli.common import out_lock


def _number(kind, low, strict: bool = False):
    """argparse type: a ``kind`` >= ``low`` (> ``low`` if ``strict``); bad values become
    one-line usage errors through the parser."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def register(subparsers):
    """Add the ``gan`` subcommand to the ``dlx`` parser's subparsers; its ``func`` default
    is ``run``."""
    from dlx.models import GAN_MODELS

    g = subparsers.add_parser(
        "gan", help="train a GAN on MNIST: sample grids, scores, checkpoints",
        epilog="Data parallel on N processes: mpiexec -n N dlx gan ... (mpiexec from pip install "
               "-e \".[dist]\"): each rank takes --batch-size images of every batch and draws "
               "its own noise; rank 0 scores and writes the files.")
    g.add_argument("--dataset", choices=("mnist",), default="mnist")
    g.add_argument("--model", choices=sorted(GAN_MODELS), default="dcgan")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    g.add_argument("--epochs", type=_number(int, 1), default=20)
    g.add_argument("--batch-size", type=_number(int, 2), default=128)
    g.add_argument("--lr", type=_number(float, 0, strict=True), default=2e-4,
                   help="the generator's learning rate (and the discriminator's, unless --d-lr)")
    g.add_argument("--d-lr", type=_number(float, 0, strict=True), default=None,
                   help="the discriminator's learning rate (two time scales, e.g. --lr 1e-4 "
                   "--d-lr 4e-4; default: --lr)")
    g.add_argument("--betas", type=_betas, default=(0.5, 0.999), metavar="B1,B2",
                   help="Adam's betas for both networks (SNGAN/hinge recipes use 0.0,0.9)")
    g.add_argument("--d-steps", type=_number(int, 1), default=1, metavar="N",
                   help="discriminator updates per generator update, each on its own batch")
    g.add_argument("--latent-dim", type=_number(int, 1), default=100)
    g.add_argument("--channels", type=_number(int, 1), default=None,
                   help="DCGAN width c (default 64): G 2c->c->1 channels, D 1->c->2c")
    g.add_argument("--ema", type=_unit_interval, default=0.0, metavar="DECAY",
                   help="also keep an exponential moving average of the generator's weights "
                   "(e.g. 0.999); it is the one sampled, scored and saved (generator_ema.npz)")
    g.add_argument("--ema-warmup", action="store_true",
                   help="with --ema: the decay of step t is min(DECAY, (1 + t) / (10 + t)), so the "
                   "average does not lag behind the generator's first steps")
    g.add_argument("--schedule", choices=("none", "cosine"), default="none",
                   help="cosine: both learning rates fall along a cosine to 0 over the epochs, "
                   "stepped after each epoch (default none: constant)")
    g.add_argument("--data-dir", default=None, help="folder with mnist/ "
                   "(default: DLX_DATA_DIR, else ~/.cache/dlx)")
    g.add_argument("--out", default="runs/gan", help="output folder (default runs/gan)")
    g.add_argument("--seed", type=_number(int, 0), default=0)
    g.add_argument("--classifier", default=None, metavar="CKPT",
                   help="a LeNet-5 MNIST checkpoint (dlx train lenet5 --dataset mnist): adds the "
                   "Inception score and Fréchet distance of its logits to scores.json")
    g.add_argument("--num-eval", type=_number(int, 2), default=2000,
                   help="generated and real test images scored per epoch (default 2000)")
    g.add_argument("--limit", type=_number(int, 2), default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    g.add_argument("--conditional", action="store_true",
                   help="class-conditional DCGAN: the generator draws the digit asked for, the "
                   "discriminator judges image and label (a projection); scores add the share "
                   "of samples the classifier reads as the digit asked for")
    g.add_argument("--info-codes", type=_number(int, 2), default=None, metavar="K",
                   help="InfoGAN (unsupervised, no labels): the generator also takes a code, one of "
                   "K drawn uniformly, and a head on the discriminator learns to read it back from "
                   "the image, so each code comes to draw one kind of digit (e.g. 10)")
    g.add_argument("--info-weight", type=_number(float, 0, strict=True), default=1.0, metavar="W",
                   help="with --info-codes: the weight of the code's cross-entropy (default 1)")
    g.add_argument("--clusters", type=_number(int, 2), default=None, metavar="K",
                   help="cluster-conditioned (self-conditioned) GAN, no labels used: the training "
                   "images are grouped into K k-means clusters of their pixels (--cluster-on), "
                   "and the class-conditional DCGAN learns to draw each cluster; samples draw a "
                   "cluster with its share of the training images (e.g. 50)")
    g.add_argument("--cluster-on", choices=("pixels", "deskewed"), default="pixels",
                   help="with --clusters: cluster the raw pixels (default), or the images with "
                   "their slant removed first (dlx.data.cluster.deskew, from each image's own "
                   "moments): clusters that follow the digits more closely")
    g.add_argument("--loss", choices=("bce", "hinge"), default="bce",
                   help="bce: non-saturating (default); hinge: the hinge loss of SNGAN")
    g.add_argument("--spectral-norm", action="store_true",
                   help="spectral norm on every layer of the DCGAN discriminator (no BatchNorm)")
    g.add_argument("--graph", action=argparse.BooleanOptionalAction, default=False,
                   help="cuda: capture each training step into a CUDA graph and replay it per "
                        "batch (dlx.compile_step); other devices run eagerly (default: eager)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=run)
    from dlx.cli import gan_sample, gan_score

    actions = g.add_subparsers(dest="gan_action", metavar="{sample,score}", parser_class=type(g))
    gan_sample.register(actions)
    gan_score.register(actions)
    return g


def _unit_interval(text):
    """argparse type: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _betas(text):
    """argparse type: Adam's "B1,B2", each in [0, 1)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers B1,B2 (e.g. 0.5,0.999), got {text!r}")
    return tuple(_unit_interval(part.strip()) for part in parts)


def _clustered(train_set, k, seed, on="pixels"):
    """(the training set with its images' k-means cluster indices as targets, a summary);
    ``on``: "pixels" or "deskewed" (the images straightened first; they still train as given)."""
    import numpy as np

    from dlx.data import ArrayDataset
    from dlx.data.cluster import deskew, kmeans
    from dlx.metrics import code_purity

    t0 = time.perf_counter()
    images = np.asarray(train_set.data)
    points = images.astype(np.float32) / 255.0
    if on == "deskewed":
        points = deskew(points)
    _, cluster_of = kmeans(points.reshape(len(images), -1), k, seed=seed)
    sizes = np.bincount(cluster_of, minlength=k)
    summary = {"k": k, "seed": seed, "on": on, "time_s": time.perf_counter() - t0,
               "sizes": sizes.tolist(),
               "frequencies": (sizes / sizes.sum()).tolist(),
               # how far the clusters follow the digits: reported, never used in training
               "label_purity": code_purity(cluster_of, train_set.targets)}
    return ArrayDataset(images, cluster_of), summary


def draw_clusters(frequencies, n, seed):
    """n cluster indices (host int64), each drawn with its frequency (seeded NumPy draw)."""
    import numpy as np

    p = np.asarray(frequencies, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def load_classifier(path, dev):
    """The MNIST classifier at ``path`` (``--classifier``: a dlx train checkpoint, LeNet-5,
    mlp or convnet) that scores the samples, in eval mode."""
    import dlx
    from dlx.cli.common import checkpoint_meta, model_for

    _, meta = checkpoint_meta("--classifier", path)
    dataset = meta.get("dataset")
    if dataset not in (None, "mnist"):
        raise ValueError(f"--classifier {path} was trained on {dataset}, not mnist")
    classifier = model_for("--classifier", path, meta, "mnist", dev)
    dlx.load(path, classifier, restore_rng=False)
    return classifier.eval()


def run(args) -> int:
    action = getattr(args, "gan_action", None)
    if action == "sample":
        from dlx.cli import gan_sample

        return gan_sample.run(args)
    if action == "score":
        from dlx.cli import gan_score

        return gan_score.run(args)
    return train(args)


def train(args) -> int:
    """``dlx gan``: train, and after every epoch write ``samples_epochNNN.png`` (64 samples
    from fixed noise), ``scores.json`` (losses, and IS / Fréchet distance of classifier logits
    with ``--classifier``), ``generator.npz`` and ``discriminator.npz`` (``dlx.save``, each
    with its Adam state; load with ``dlx.load(path, DCGANGenerator())``). ``--schedule
    cosine`` anneals both learning rates to 0 over the run. With ``--ema``,
    the weight-averaged generator is sampled and scored (the trained one's scores get a
    ``_live`` suffix) and saved as ``generator_ema.npz``."""
    import numpy as np

    import dlx
    from dlx import distributed, metrics, models, optim, plots
    from dlx.data import MNIST, ArrayDataset, DataLoader
    from dlx.data.transforms import Normalize
    from dlx.training.gan import sample, train_gan

    if args.channels is not None and args.model != "dcgan":
        raise ValueError(f"--channels sets the DCGAN's width; the {args.model} GAN has fixed "
                         f"hidden sizes (leave --channels out)")
    if (args.conditional or args.spectral_norm or args.info_codes or args.clusters) \
            and args.model != "dcgan":
        raise ValueError(f"--conditional, --info-codes, --clusters and --spectral-norm are for the "
                         f"DCGAN, not the {args.model} GAN (use --model dcgan)")
    if sum(map(bool, (args.conditional, args.info_codes, args.clusters))) > 1:
        raise ValueError("--conditional (labels), --info-codes (unsupervised codes) and --clusters "
                         "(k-means clusters) each give the generator a class input: choose one")
    if args.cluster_on != "pixels" and not args.clusters:
        raise ValueError(f"--cluster-on {args.cluster_on} chooses what --clusters K groups: it "
                         f"needs --clusters")
    if args.info_weight != 1.0 and not args.info_codes:
        raise ValueError(f"--info-weight {args.info_weight} weighs InfoGAN's code loss: it needs "
                         f"--info-codes K")
    if args.limit is not None and args.limit < args.batch_size:
        raise ValueError(f"--limit {args.limit} is smaller than --batch-size "
                         f"{args.batch_size}: there would be no full batch to train on")
    world = distributed.init()  # before the first array: ranks on one machine share its cores
    main = world.rank == 0  # under mpiexec rank 0 prints, scores and writes the files
    dev = dlx.device(args.device)
    dlx.manual_seed(args.seed)
    train_set = MNIST(root=args.data_dir, train=True)
    if args.limit is not None:
        train_set = ArrayDataset(train_set.data[:args.limit], train_set.targets[:args.limit])
    clustering = None
    if args.clusters:  # the clusters stand in for the labels (which are left unused)
        train_set, clustering = _clustered(train_set, args.clusters, args.seed, args.cluster_on)
        if main:
            print(f"k-means: {args.clusters} clusters of the {len(train_set)} training images' "
                  f"{'deskewed ' if args.cluster_on == 'deskewed' else ''}pixels in "
                  f"{clustering['time_s']:.0f} s, {min(clustering['sizes'])} to "
                  f"{max(clustering['sizes'])} images each")
    classifier = load_classifier(args.classifier, dev) if args.classifier else None
    gen_cls, disc_cls = models.GAN_MODELS[args.model]  # looked up now: float32_drift.py swaps them
    width = {} if args.channels is None else {"channels": args.channels}
    if args.conditional or args.clusters:
        gen_cls, disc_cls = models.ConditionalDCGANGenerator, models.ConditionalDCGANDiscriminator
        if args.clusters:
            width["num_classes"] = args.clusters
    elif args.info_codes:
        gen_cls, disc_cls = models.InfoDCGANGenerator, models.InfoDCGANDiscriminator
        width["num_codes"] = args.info_codes
    generator = gen_cls(latent_dim=args.latent_dim, device=dev, **width)
    sn = {"spectral_norm": True} if args.spectral_norm else {}
    discriminator = disc_cls(device=dev, **width, **sn)
    distributed.broadcast_parameters(generator)
    distributed.broadcast_parameters(discriminator)
    ema = None
    if args.ema:  # the averaged generator is the one sampled, scored and saved as generator_ema.npz
        ema = gen_cls(latent_dim=args.latent_dim, device=dev, **width)
        ema.load_state_dict(generator.state_dict())
        ema.requires_grad_(False)
    # drop_last: BatchNorm needs more than one image, and equal batches keep D and G balanced
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        seed=args.seed, device=dev, transform=Normalize((0.5,), (0.5,)),
                        shard=(world.rank, world.size) if world.size > 1 else None)
    g_opt = optim.Adam(generator.parameters(), lr=args.lr, betas=args.betas)
    d_opt = optim.Adam(discriminator.parameters(), lr=args.d_lr or args.lr, betas=args.betas)
    schedulers = []
    if args.schedule == "cosine":
        schedulers = [optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.epochs)
                      for o in (g_opt, d_opt)]

    # Evaluation noise has its own streams, so scoring never changes the training run.
    # InfoGAN: 8 samples of each code, one row per code; clusters: of the 10 largest; else 64
    grid_rows = args.info_codes or (min(args.clusters, 10) if args.clusters else 0)
    grid_size = 8 * grid_rows if grid_rows else 64
    fixed_z = dev.generator([args.seed, 3]).normal((grid_size, args.latent_dim))
    # conditional: the grid asks for 0..9 in turn, the scored samples for each digit equally;
    # InfoGAN: the grid shows each code in a row, the scored samples draw them uniformly
    fixed_y = eval_y = None
    if args.conditional:
        fixed_y, eval_y = dev.asarray(np.arange(64) % 10), dev.asarray(np.arange(args.num_eval) % 10)
    elif grid_rows:
        fixed_y = dev.asarray(np.repeat(np.arange(grid_rows), 8))
    real_logits, real_is = None, None
    if classifier is not None and main:
        test = MNIST(root=args.data_dir, train=False)
        n_real = min(args.num_eval, len(test))
        real_is, real_logits = metrics.classifier_scores(
            classifier, test.data[:n_real, None].astype(np.float32) / 255.0, device=dev)

    os.makedirs(args.out, exist_ok=True)
    with out_lock(args.out, "dlx gan") if main else contextlib.nullcontext():
        run_args = {k: v for k, v in vars(args).items() if k != "func"}
        report = {"model": args.model, "dataset": args.dataset, "device": str(dev), "args": run_args,
                  "real_test": None if real_is is None else
                  {"inception_score": real_is, "num_images": len(real_logits)},
                  **({"clusters": clustering} if clustering else {}), "epochs": []}
        have_plots = plots.have_matplotlib() and main
        batch = (f"batch {args.batch_size}" if world.size == 1 else
                 f"{world.size} ranks x batch {args.batch_size} = batch {world.size * args.batch_size}")
        if main:
            print(f"dlx {dlx.__version__}: training the {args.model} GAN on {args.dataset} "
                  f"({len(train_set)} images), device {dev}, {batch}, Adam lr {args.lr}"
                  + (f"; real test images score IS {real_is:.3f}" if real_is is not None else ""))
        if not plots.have_matplotlib() and main:
            print("sample grids skipped: matplotlib is not installed (pip install \"dlx[plots]\")")

        shown = ema if ema is not None else generator

        def after_epoch(epoch, logs):
            logs["lr"] = float(g_opt.param_groups[0]["lr"])  # the rate this epoch trained with
            if args.d_lr:
                logs["d_lr"] = float(d_opt.param_groups[0]["lr"])
            for sched in schedulers:
                sched.step()
            if not main:
                return
            if have_plots:
                plots.save_grid(sample(shown, fixed_z, labels=fixed_y),
                                os.path.join(args.out, f"samples_epoch{epoch:03d}.png"),
                                title=f"epoch {epoch}",
                                caption=(f"class-conditional {args.model} GAN on MNIST: 64 samples from "
                                         f"fixed noise, digits 0-9 asked for in turn" if args.conditional
                                         else f"InfoGAN ({args.model}) on MNIST: 8 samples of each code "
                                         f"from fixed noise" if args.info_codes
                                         else f"cluster-conditioned {args.model} GAN on MNIST: 8 samples "
                                         f"of each of the {grid_rows} largest clusters" if args.clusters
                                         else f"{args.model} GAN on MNIST: 64 samples from fixed noise")
                    + (f" (weight average, decay {args.ema})" if ema is not None else ""),
                                row_labels=[f"{'code' if args.info_codes else 'cluster'} {k}"
                                            for k in range(grid_rows)] if grid_rows else None)
            if classifier is not None:
                z = dev.generator([args.seed, 4, epoch]).normal((args.num_eval, args.latent_dim))
                asked = eval_y
                if args.info_codes:  # part of the noise: drawn uniformly, as in training
                    asked = dev.generator([args.seed, 4, epoch, 1]).integers(
                        0, args.info_codes, (args.num_eval,))
                elif args.clusters:  # each cluster with its share of the training images
                    asked = dev.asarray(draw_clusters(clustering["frequencies"], args.num_eval,
                                                      [args.seed, 4, epoch]))
                for suffix, model in (("", shown), ("_live", generator if ema is not None else None)):
                    if model is None:
                        continue
                    logs["inception_score" + suffix], fake_logits = metrics.classifier_scores(
                        classifier, sample(model, z, labels=asked), device=dev)
                    logs["frechet_distance" + suffix] = metrics.frechet_distance(fake_logits, real_logits)
                    if args.conditional:  # read as the digit asked for
                        logs["label_accuracy" + suffix] = float(np.mean(
                            np.argmax(fake_logits, axis=1) == np.arange(args.num_eval) % 10))
                    if args.info_codes or args.clusters:  # how far each code draws one digit
                        logs["code_purity" + suffix] = metrics.code_purity(
                            dlx.to_numpy(asked), np.argmax(fake_logits, axis=1))
            report["epochs"].append(dict(logs))
            with open(os.path.join(args.out, "scores.json"), "w") as f:
                json.dump(report, f, indent=1)
            meta = {"architecture": args.model, "dataset": args.dataset, "epoch": epoch,
                    "latent_dim": args.latent_dim, "conditional": args.conditional,
                    "info_codes": args.info_codes, "clusters": args.clusters,
                    "cluster_frequencies": clustering["frequencies"] if clustering else None,
                    "channels": args.channels or 64, "args": run_args}
            dlx.save(os.path.join(args.out, "generator.npz"), generator, g_opt, **meta)
            dlx.save(os.path.join(args.out, "discriminator.npz"), discriminator, d_opt, **meta)
            if ema is not None:
                dlx.save(os.path.join(args.out, "generator_ema.npz"), ema, **meta, ema_decay=args.ema)

        t0 = time.perf_counter()
        train_gan(generator, discriminator, loader, args.epochs, latent_dim=args.latent_dim, device=dev,
                  callback=after_epoch, progress=not args.quiet, g_optimizer=g_opt, d_optimizer=d_opt,
                  ema_generator=ema, ema_decay=args.ema or 0.999, loss=args.loss,
                  ema_warmup=args.ema_warmup, graph=args.graph, d_steps=args.d_steps,
                  info_weight=args.info_weight)
        if not main:
            return 0
        last = report["epochs"][-1]
        scores = (f", IS {last['inception_score']:.3f}, Fréchet distance {last['frechet_distance']:.3f}"
                  if classifier is not None else "")
        print(f"epoch {last['epoch']}: d_loss {last['d_loss']:.4f}, g_loss {last['g_loss']:.4f}{scores} "
              f"({time.perf_counter() - t0:.0f} s); wrote {args.out}/scores.json, generator.npz, "
              f"discriminator.npz" + (", generator_ema.npz" if ema is not None else "")
              + (", samples_epoch*.png" if have_plots else ""))
        return 0
