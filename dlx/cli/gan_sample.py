"""``dlx gan sample CKPT``: a grid of digits drawn by a trained generator, one row per digit
asked for (class-conditional checkpoints), one row per code (InfoGAN checkpoints: what each
unsupervised code learned to draw), one row per cluster (cluster-conditioned checkpoints: the
ten largest), or rows of unconditional samples."""

from __future__ import annotations

import os


def register(actions):
    s = actions.add_parser("sample", help="draw a grid from a generator checkpoint")
    s.add_argument("checkpoint", metavar="CKPT",
                   help="generator.npz or generator_ema.npz written by dlx gan")
    s.add_argument("--digits", default="0123456789",
                   help="one row per digit asked for (conditional checkpoints; default 0123456789); "
                   "an InfoGAN checkpoint shows one row per code, a cluster-conditioned one its ten "
                   "largest clusters, an unconditional one as many rows as digits given")
    s.add_argument("--per-digit", type=int, default=8, help="samples per row (default 8)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    s.add_argument("--out", default="grid.png", help="the PNG to write (default grid.png)")
    return s


def load_generator(path, dev):
    """(generator, metadata) of a generator checkpoint written by dlx gan (generator.npz or
    generator_ema.npz), rebuilt with its architecture, width and latent size."""
    import dlx
    from dlx import models
    from dlx.serialization import read_header

    meta = read_header(path).get("meta", {})
    if meta.get("architecture") not in models.GAN_MODELS:
        raise ValueError(f"{path!r} is not a generator written by dlx gan (no GAN architecture in "
                         f"its metadata)")
    latent = int(meta.get("latent_dim", 100))
    channels = meta.get("channels") or (meta.get("args") or {}).get("channels")
    width = {"channels": int(channels)} if channels and meta["architecture"] == "dcgan" else {}
    if meta.get("conditional", False):
        generator = models.ConditionalDCGANGenerator(latent_dim=latent, device=dev, **width)
    elif meta.get("clusters"):
        generator = models.ConditionalDCGANGenerator(latent_dim=latent, num_classes=int(meta["clusters"]),
                                                     device=dev, **width)
    elif meta.get("info_codes"):
        generator = models.InfoDCGANGenerator(latent_dim=latent, num_codes=int(meta["info_codes"]),
                                              device=dev, **width)
    else:
        generator = models.GAN_MODELS[meta["architecture"]][0](latent_dim=latent, device=dev, **width)
    dlx.load(path, generator, restore_rng=False)
    return generator, meta


def run(args) -> int:
    import numpy as np

    import dlx
    from dlx import plots
    from dlx.cli.common import UsageError
    from dlx.training.gan import sample

    digits = args.digits.strip()
    if not digits or not digits.isdigit():
        raise UsageError(f"dlx gan sample: --digits takes digits 0-9 (e.g. 0123456789), got {args.digits!r}")
    if args.per_digit < 1:
        raise UsageError("dlx gan sample: --per-digit must be at least 1")
    if not plots.have_matplotlib():
        raise UsageError('dlx gan sample: drawing the grid needs matplotlib: pip install "dlx[plots]"')
    dev = dlx.device(args.device)
    generator, meta = load_generator(args.checkpoint, dev)
    latent, conditional = generator.latent_dim, bool(meta.get("conditional", False))
    info_codes = int(meta.get("info_codes") or 0)
    clusters = min(int(meta.get("clusters") or 0), 10)  # the largest ten (numbered by size)
    if conditional:
        rows, title = [int(d) for d in digits], f"digits {digits}, {args.per_digit} per row"
        row_labels = list(digits)
    elif info_codes or clusters:
        rows = list(range(info_codes or clusters))
        kind = "code" if info_codes else "cluster"
        title = (f"InfoGAN: its {info_codes} codes (learned without labels), one per row" if info_codes
                 else f"the {clusters} largest k-means clusters of the training images, one per row")
        row_labels = [f"{kind} {c}" for c in rows]
    else:
        rows, row_labels = list(range(len(digits))), None
        title = f"{len(rows) * args.per_digit} samples of an unconditional generator"
    n = len(rows) * args.per_digit
    z = dev.generator([args.seed, 5]).normal((n, latent))
    labels = dev.asarray(np.repeat(rows, args.per_digit)) if row_labels is not None else None
    images = sample(generator, z, labels=labels)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.save_grid(images, args.out, title=title, ncols=args.per_digit, row_labels=row_labels,
                    caption=f"{os.path.basename(args.checkpoint)}, epoch {meta.get('epoch', '?')}, "
                            f"seed {args.seed}")
    print(f"wrote {args.out}: {n} samples from {args.checkpoint}")
    return 0
