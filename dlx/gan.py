"""GANs on 28x28 digits: DCGAN and MLP generators/discriminators, the training loop
(``train_gan``, non-saturating loss, explicit backward) and the ``dlx gan`` command.

Generators end in Tanh, so images are in [-1, 1]: feed real images the same way
(``Normalize((0.5,), (0.5,))`` on the loader's [0, 1] batches) and map samples back with
``(x + 1) / 2`` to show or score them. Discriminators output one logit per image, for
``nn.BCEWithLogitsLoss``. All four models are ``nn.Sequential``s, so their state dicts have
the names the same ``torch.nn.Sequential`` would give.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from dlx import init, nn
from dlx._device import device as _device
from dlx._device import get_namespace, to_numpy

__all__ = [
    "DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator",
    "add_gan_parser", "copy_buffers_", "dcgan_init_", "ema_update_", "gan_command", "gan_step",
    "sample", "train_gan",
]


def dcgan_init_(model) -> None:
    """Radford et al.'s initialisation: conv and linear weights N(0, 0.02), BatchNorm
    weights N(1, 0.02), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            init.normal_(m.weight, 1.0, 0.02)
            init.zeros_(m.bias)


class DCGANGenerator(nn.Sequential):
    """z (N, latent_dim) -> images (N, out_channels, 28, 28) in [-1, 1]:

    Linear -> (2c, 7, 7) -> BN -> ReLU -> ConvT 4x4/2 -> (c, 14, 14) -> BN -> ReLU ->
    ConvT 4x4/2 -> (out_channels, 28, 28) -> Tanh, with c = ``channels`` (64).
    ``dcgan_init`` applies ``dcgan_init_`` (else PyTorch's default initialisation).
    """

    def __init__(self, latent_dim: int = 100, channels: int = 64, out_channels: int = 1,
                 dcgan_init: bool = True, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        c2 = 2 * channels
        super().__init__(
            nn.Linear(latent_dim, c2 * 7 * 7, bias=False, **kw),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.BatchNorm2d(c2, **kw), nn.ReLU(),
            nn.ConvTranspose2d(c2, channels, 4, stride=2, padding=1, bias=False, **kw),
            nn.BatchNorm2d(channels, **kw), nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1, **kw),
            nn.Tanh(),
        )
        self.latent_dim = latent_dim
        if dcgan_init:
            dcgan_init_(self)


class DCGANDiscriminator(nn.Sequential):
    """images (N, in_channels, 28, 28) -> one logit per image (N, 1):

    Conv 4x4/2 -> (c, 14, 14) -> LeakyReLU(0.2) -> Conv 4x4/2 -> (2c, 7, 7) -> BN ->
    LeakyReLU(0.2) -> Flatten -> Linear, with c = ``channels`` (64).
    """

    def __init__(self, channels: int = 64, in_channels: int = 1, dcgan_init: bool = True,
                 device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        c2 = 2 * channels
        super().__init__(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1, **kw), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, c2, 4, stride=2, padding=1, bias=False, **kw),
            nn.BatchNorm2d(c2, **kw), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, 1, **kw),
        )
        if dcgan_init:
            dcgan_init_(self)


class MLPGenerator(nn.Sequential):
    """The simple MLP GAN's generator: z (N, latent_dim) -> Linear/LeakyReLU(0.2) layers of
    ``hidden`` sizes -> Linear(784) -> Tanh -> (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, hidden=(256, 512), device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h, **kw), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, 28 * 28, **kw), nn.Tanh(), nn.Unflatten(1, (1, 28, 28))]
        super().__init__(*layers)
        self.latent_dim = latent_dim


class MLPDiscriminator(nn.Sequential):
    """The simple MLP GAN's discriminator: (N, 1, 28, 28) -> Flatten -> Linear/LeakyReLU(0.2)
    layers of ``hidden`` sizes -> Linear(1), one logit per image."""

    def __init__(self, hidden=(512, 256), device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        layers, width = [nn.Flatten()], 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h, **kw), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1, **kw))
        super().__init__(*layers)


MODELS = {"dcgan": (DCGANGenerator, DCGANDiscriminator), "mlp": (MLPGenerator, MLPDiscriminator)}


# ---- training --------------------------------------------------------------------------------
def _sigmoid_mean(xp, logits):
    e = xp.exp(-xp.abs(logits))
    return xp.mean(xp.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def gan_step(generator, discriminator, real, z, g_optimizer, d_optimizer, loss_fn=None):
    """One step of the non-saturating GAN (Goodfellow et al., 2014) with explicit backward.

    D step: BCE(D(real), 1) + BCE(D(G(z)), 0), gradients into D only (the fake images are
    plain arrays, nothing flows back to G), then ``d_optimizer.step()``.
    G step: BCE(D'(G(z)), 1) through the updated D, frozen (``requires_grad_(False)``: its
    backward returns dL/dfake and leaves D's ``.grad`` alone), then ``generator.backward``
    and ``g_optimizer.step()``. Returns 0-d device arrays (no host sync):
    ``{"d_loss", "g_loss", "d_real", "d_fake"}`` with d_real/d_fake the mean D probability
    on real and fake images during the D step.
    """
    loss_fn = loss_fn or nn.BCEWithLogitsLoss()
    xp = get_namespace(real)
    fake = generator(z)  # caches what generator.backward needs in the G step below

    d_optimizer.zero_grad()
    out_real = discriminator(real)
    loss_real = loss_fn(out_real, xp.ones_like(out_real))
    discriminator.backward_params(loss_fn.backward())
    out_fake = discriminator(fake)
    loss_fake = loss_fn(out_fake, xp.zeros_like(out_fake))
    discriminator.backward_params(loss_fn.backward())
    d_optimizer.step()
    d_optimizer.zero_grad()

    g_optimizer.zero_grad()
    discriminator.requires_grad_(False)
    try:
        out = discriminator(fake)
        g_loss = loss_fn(out, xp.ones_like(out))  # non-saturating: maximise log D(G(z))
        dfake = discriminator.backward(loss_fn.backward())
    finally:
        discriminator.requires_grad_(True)
    generator.backward_params(dfake)
    g_optimizer.step()
    g_optimizer.zero_grad()
    return {"d_loss": loss_real + loss_fake, "g_loss": g_loss,
            "d_real": _sigmoid_mean(xp, out_real), "d_fake": _sigmoid_mean(xp, out_fake)}


def ema_update_(average, model, decay: float) -> None:
    """Exponential moving average of weights, in place: every parameter of ``average``
    becomes ``decay * average + (1 - decay) * model`` (the models have the same layout).
    Sampling from the average of the last few thousand generator steps, rather than from
    the last step alone, smooths out the oscillation of GAN training (Yazıcı et al., 2019)."""
    for avg, p in zip(average.parameters(), model.parameters()):
        avg.data *= decay
        avg.data += (1.0 - decay) * p.data


def copy_buffers_(dst, src) -> None:
    """Copy the buffers (BatchNorm's running statistics) of ``src`` into ``dst``."""
    names = {name for name, _ in src.named_buffers()}
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in names}, strict=False)


def train_gan(generator, discriminator, loader, epochs: int, lr: float = 2e-4,
              betas=(0.5, 0.999), latent_dim: int | None = None, device=None, callback=None,
              progress: bool = True, g_optimizer=None, d_optimizer=None, ema_generator=None,
              ema_decay: float = 0.999) -> dict:
    """Train a GAN for ``epochs`` epochs over ``loader`` (batches ``(x, y)`` or ``x``, images
    in the generator's output range, [-1, 1]) with Adam(lr, betas) for both networks
    (or the optimizers given). Noise z ~ N(0, 1) of size ``latent_dim`` (default
    ``generator.latent_dim``) is drawn from the device's dlx generator (``dlx.manual_seed``).

    ``callback(epoch, logs)`` (epoch 1-based) runs after each epoch and may add entries to
    ``logs`` (sample grids, scores); returning True stops training. Returns the history:
    a dict of per-epoch lists ``epoch, d_loss, g_loss, d_real, d_fake, time_s, images_per_s``.
    With ``ema_generator`` (a copy of the generator), its weights follow the generator's as
    an exponential moving average (``ema_update_`` with ``ema_decay`` after every step), and
    its buffers are the generator's at the end of every epoch.
    A NaN or infinite mean loss raises FloatingPointError at the end of its epoch (losses
    are summed on the device and read back every 50 steps, not synchronised every step),
    before the callback, so no checkpoint of the broken weights is written.
    """
    from tqdm.auto import tqdm

    from dlx import optim
    from dlx._random import generator as rng_of

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train_gan: epochs must be a positive int, got {epochs!r}")
    dev = _device(device) if device is not None else (generator.device or _device())
    latent_dim = latent_dim or getattr(generator, "latent_dim", None)
    if not latent_dim:
        raise ValueError("train_gan: give latent_dim (the generator has no .latent_dim)")
    g_optimizer = g_optimizer or optim.Adam(generator.parameters(), lr=lr, betas=betas)
    d_optimizer = d_optimizer or optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = generator.dtype or "float32"
    history: dict = {}
    for epoch in range(1, epochs + 1):
        generator.train()
        discriminator.train()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        t0, seen, steps, sums = time.perf_counter(), 0, 0, None
        for batch in loader:
            real = batch[0] if isinstance(batch, (tuple, list)) else batch
            n = int(real.shape[0])
            z = rng_of(dev).normal((n, latent_dim), dtype=dtype)
            out = gan_step(generator, discriminator, real, z, g_optimizer, d_optimizer, loss_fn)
            if ema_generator is not None:
                ema_update_(ema_generator, generator, ema_decay)
            # summed on the device; read back every 50 steps for the bar, not every step
            sums = out if sums is None else {k: sums[k] + v for k, v in out.items()}
            seen, steps = seen + n, steps + 1
            if progress and (steps % 50 == 0 or steps == len(loader)):
                bar.set_postfix({k: f"{float(to_numpy(v)) / steps:.3f}" for k, v in sums.items()},
                                refresh=False)
            bar.update(1)
        bar.close()
        if steps == 0:
            raise ValueError("train_gan: the loader produced no batches")
        elapsed = time.perf_counter() - t0
        logs = {"epoch": epoch, **{k: float(to_numpy(v)) / steps for k, v in sums.items()},
                "time_s": elapsed, "images_per_s": seen / elapsed}
        if not (math.isfinite(logs["d_loss"]) and math.isfinite(logs["g_loss"])):
            raise FloatingPointError(f"train_gan: the loss became non-finite in epoch {epoch} "
                                     f"(d_loss {logs['d_loss']}, g_loss {logs['g_loss']}); "
                                     f"try a lower learning rate")
        if ema_generator is not None:
            copy_buffers_(ema_generator, generator)
        stop = bool(callback(epoch, logs)) if callback is not None else False
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch" and isinstance(v, float)))
        if stop:
            break
    return history


def sample(generator, z, batch_size: int = 500) -> np.ndarray:
    """Generated images for noise ``z`` (N, latent_dim), in eval mode (BatchNorm uses its
    running statistics), mapped to [0, 1]: a host float32 array (N, C, 28, 28)."""
    was_training = generator.training
    generator.eval()
    try:
        n = int(z.shape[0])  # slices clamped: the Array API leaves out-of-range stops undefined
        parts = [to_numpy(generator(z[lo:min(lo + batch_size, n), ...]))
                 for lo in range(0, n, batch_size)]
    finally:
        generator.train(was_training)
    return np.clip((np.concatenate(parts) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


# ---- the `dlx gan` command --------------------------------------------------------------------
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


def add_gan_parser(subparsers):
    """Add the ``gan`` subcommand to the ``dlx`` parser's subparsers; its ``func`` default
    is ``gan_command``."""
    g = subparsers.add_parser("gan", help="train a GAN on MNIST: sample grids, scores, checkpoints")
    g.add_argument("--dataset", choices=("mnist",), default="mnist")
    g.add_argument("--model", choices=sorted(MODELS), default="dcgan")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    g.add_argument("--epochs", type=_number(int, 1), default=20)
    g.add_argument("--batch-size", type=_number(int, 2), default=128)
    g.add_argument("--lr", type=_number(float, 0, strict=True), default=2e-4)
    g.add_argument("--latent-dim", type=_number(int, 1), default=100)
    g.add_argument("--channels", type=_number(int, 1), default=None,
                   help="DCGAN width c (default 64): G 2c->c->1 channels, D 1->c->2c")
    g.add_argument("--ema", type=_unit_interval, default=0.0, metavar="DECAY",
                   help="also keep an exponential moving average of the generator's weights "
                   "(e.g. 0.999); it is the one sampled, scored and saved (generator_ema.npz)")
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
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=gan_command)
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


def _load_classifier(path, dev):
    import dlx
    from dlx.models import LeNet5
    from dlx.serialization import read

    header, _ = read(path)
    dataset = header.get("meta", {}).get("dataset")
    if dataset not in (None, "mnist"):
        raise ValueError(f"--classifier {path} was trained on {dataset}, not mnist")
    classifier = LeNet5(in_channels=1, padding=2, device=dev)
    dlx.load(path, classifier, restore_rng=False)
    return classifier.eval()


def gan_command(args) -> int:
    """``dlx gan``: train, and after every epoch write ``samples_epochNNN.png`` (64 samples
    from fixed noise), ``scores.json`` (losses, and IS / Fréchet distance of classifier logits
    with ``--classifier``), ``generator.npz`` and ``discriminator.npz`` (``dlx.save``, each
    with its Adam state; load with ``dlx.load(path, DCGANGenerator())``). ``--schedule
    cosine`` anneals both learning rates to 0 over the run. With ``--ema``,
    the weight-averaged generator is sampled and scored (the trained one's scores get a
    ``_live`` suffix) and saved as ``generator_ema.npz``."""
    import dlx
    from dlx import metrics, optim, plots
    from dlx.data import MNIST, ArrayDataset, DataLoader
    from dlx.data.transforms import Normalize

    if args.channels is not None and args.model != "dcgan":
        raise ValueError(f"--channels sets the DCGAN's width; the {args.model} GAN has fixed "
                         f"hidden sizes (leave --channels out)")
    if args.limit is not None and args.limit < args.batch_size:
        raise ValueError(f"--limit {args.limit} is smaller than --batch-size "
                         f"{args.batch_size}: there would be no full batch to train on")
    dev = dlx.device(args.device)
    dlx.manual_seed(args.seed)
    train_set = MNIST(root=args.data_dir, train=True)
    if args.limit is not None:
        train_set = ArrayDataset(train_set.data[:args.limit], train_set.targets[:args.limit])
    classifier = _load_classifier(args.classifier, dev) if args.classifier else None
    gen_cls, disc_cls = MODELS[args.model]
    width = {} if args.channels is None else {"channels": args.channels}
    generator = gen_cls(latent_dim=args.latent_dim, device=dev, **width)
    discriminator = disc_cls(device=dev, **width)
    ema = None
    if args.ema:  # the averaged generator is the one sampled, scored and saved as generator_ema.npz
        ema = gen_cls(latent_dim=args.latent_dim, device=dev, **width)
        ema.load_state_dict(generator.state_dict())
        ema.requires_grad_(False)
    # drop_last: BatchNorm needs more than one image, and equal batches keep D and G balanced
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        seed=args.seed, device=dev, transform=Normalize((0.5,), (0.5,)))
    g_opt = optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    d_opt = optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    schedulers = []
    if args.schedule == "cosine":
        schedulers = [optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.epochs)
                      for o in (g_opt, d_opt)]

    # Evaluation noise has its own streams, so scoring never changes the training run.
    fixed_z = dev.backend.generator(dev.index, [args.seed, 3]).normal((64, args.latent_dim))
    real_logits, real_is = None, None
    if classifier is not None:
        test = MNIST(root=args.data_dir, train=False)
        n_real = min(args.num_eval, len(test))
        real_is, real_logits = metrics.classifier_scores(
            classifier, test.data[:n_real, None].astype(np.float32) / 255.0, device=dev)

    os.makedirs(args.out, exist_ok=True)
    run_args = {k: v for k, v in vars(args).items() if k != "func"}
    report = {"model": args.model, "dataset": args.dataset, "device": str(dev), "args": run_args,
              "real_test": None if real_is is None else
              {"inception_score": real_is, "num_images": len(real_logits)},
              "epochs": []}
    have_plots = plots.have_matplotlib()
    print(f"dlx {dlx.__version__}: training the {args.model} GAN on {args.dataset} "
          f"({len(train_set)} images), device {dev}, batch {args.batch_size}, Adam lr {args.lr}"
          + (f"; real test images score IS {real_is:.3f}" if real_is is not None else ""))
    if not have_plots:
        print("sample grids skipped: matplotlib is not installed (pip install \"dlx[plots]\")")

    shown = ema if ema is not None else generator

    def after_epoch(epoch, logs):
        logs["lr"] = float(g_opt.param_groups[0]["lr"])  # the rate this epoch trained with
        for sched in schedulers:
            sched.step()
        if have_plots:
            plots.save_grid(sample(shown, fixed_z),
                            os.path.join(args.out, f"samples_epoch{epoch:03d}.png"),
                            title=f"epoch {epoch}",
                            caption=f"{args.model} GAN on MNIST: 64 samples from fixed noise"
                + (f" (weight average, decay {args.ema})" if ema is not None else ""))
        if classifier is not None:
            z = dev.backend.generator(dev.index, [args.seed, 4, epoch]).normal(
                (args.num_eval, args.latent_dim))
            for suffix, model in (("", shown), ("_live", generator if ema is not None else None)):
                if model is None:
                    continue
                logs["inception_score" + suffix], fake_logits = metrics.classifier_scores(
                    classifier, sample(model, z), device=dev)
                logs["frechet_distance" + suffix] = metrics.frechet_distance(fake_logits, real_logits)
        report["epochs"].append(dict(logs))
        with open(os.path.join(args.out, "scores.json"), "w") as f:
            json.dump(report, f, indent=1)
        meta = {"architecture": args.model, "dataset": args.dataset, "epoch": epoch,
                "latent_dim": args.latent_dim, "args": run_args}
        dlx.save(os.path.join(args.out, "generator.npz"), generator, g_opt, **meta)
        dlx.save(os.path.join(args.out, "discriminator.npz"), discriminator, d_opt, **meta)
        if ema is not None:
            dlx.save(os.path.join(args.out, "generator_ema.npz"), ema, **meta, ema_decay=args.ema)

    t0 = time.perf_counter()
    train_gan(generator, discriminator, loader, args.epochs, latent_dim=args.latent_dim, device=dev,
              callback=after_epoch, progress=not args.quiet, g_optimizer=g_opt, d_optimizer=d_opt,
              ema_generator=ema, ema_decay=args.ema or 0.999)
    last = report["epochs"][-1]
    scores = (f", IS {last['inception_score']:.3f}, Fréchet distance {last['frechet_distance']:.3f}"
              if classifier is not None else "")
    print(f"epoch {last['epoch']}: d_loss {last['d_loss']:.4f}, g_loss {last['g_loss']:.4f}{scores} "
          f"({time.perf_counter() - t0:.0f} s); wrote {args.out}/scores.json, generator.npz, "
          f"discriminator.npz" + (", generator_ema.npz" if ema is not None else "")
          + (", samples_epoch*.png" if have_plots else ""))
    return 0
