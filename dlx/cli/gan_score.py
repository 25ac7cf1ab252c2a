"""``dlx gan score CKPT --classifier JUDGE``: a generator judged by a classifier it never saw.

Scores ``--num`` samples (default 10,000; a class-conditional generator is asked for each
digit equally) and as many real MNIST test digits with the same classifier, and prints and
writes every figure beside the real set's and their ratio: the Inception score and its two
parts (the entropy of the classes read, at most ln 10; the mean entropy of one prediction),
the Fréchet distance between the classifier's logits of samples and real digits, the share
read with confidence under 0.9, and, conditional, the share read as the digit asked for
(InfoGAN: the codes are drawn uniformly at random, as in training; cluster-conditioned: each
cluster with its share of the training images; the share of samples read as their code's or
cluster's most frequent digit is reported as ``code_purity``).
The samples are rounded to uint8 before they are scored, as the real digits are stored, so
``--samples FILE.npz`` keeps exactly what was scored (``images`` uint8 (N, 28, 28), and
``labels``, the digits asked for, for a conditional generator; ``codes`` or ``clusters``
for an InfoGAN or cluster-conditioned one): anyone can score them again
with a classifier of their own.
"""

from __future__ import annotations

import json
import os


def register(actions):
    s = actions.add_parser("score", help="judge a generator checkpoint with a classifier")
    s.add_argument("checkpoint", metavar="CKPT",
                   help="generator.npz or generator_ema.npz written by dlx gan")
    s.add_argument("--classifier", required=True, metavar="CKPT",
                   help="an MNIST classifier written by dlx train (e.g. the judge, "
                   "examples/results/judge_convnet_mnist/model.npz)")
    s.add_argument("--num", type=int, default=10000, help="samples and real test digits (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--data-dir", default=None, help="folder with mnist/ (default: DLX_DATA_DIR)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    s.add_argument("--json", default=None, help="also write the figures here")
    s.add_argument("--samples", default=None, metavar="FILE.npz",
                   help="also write the scored samples (uint8 images, and the labels asked for, or "
                   "the InfoGAN codes or clusters drawn)")
    return s


def _write_atomically(path, write):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)  # whole or not at all


def figures(probs, logits=None, asked=None) -> dict:
    """The parts of a set's Inception score (and the share read as ``asked``)."""
    import numpy as np

    from dlx import metrics

    mean = probs.mean(axis=0)
    out = {"inception_score": metrics.inception_score(probs),
           "class_entropy": float(-(mean * np.log(np.maximum(mean, 1e-30))).sum()),
           "mean_prediction_entropy": float(-(probs * np.log(np.maximum(probs, 1e-30))).sum(1).mean()),
           "confidence_below_0.9": float((probs.max(axis=1) < 0.9).mean()),
           "class_frequencies": np.round(np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
                                         / len(probs), 4).tolist()}
    if asked is not None:
        out["read_as_asked"] = float((probs.argmax(axis=1) == asked).mean())
    return out


def run(args) -> int:
    import numpy as np

    import dlx
    from dlx import metrics
    from dlx.cli.common import UsageError
    from dlx.cli.gan import load_classifier
    from dlx.cli.gan_sample import load_generator
    from dlx.data import MNIST
    from dlx.training.gan import sample

    if args.num < 2:
        raise UsageError(f"dlx gan score: --num must be at least 2, got {args.num}")
    dev = dlx.device(args.device)
    generator, meta = load_generator(args.checkpoint, dev)
    classifier = load_classifier(args.classifier, dev)
    test = MNIST(root=args.data_dir, train=False)
    n = min(args.num, len(test))
    if n < args.num:
        raise UsageError(f"dlx gan score: --num {args.num} is more than the {len(test)} real test "
                         f"digits it is compared with; use --num {len(test)} or fewer")
    conditional = bool(meta.get("conditional", False))
    num_codes = int(meta.get("info_codes") or 0)
    asked = np.arange(n) % 10
    z = dev.generator([args.seed, 6]).normal((n, generator.latent_dim))
    codes = (dlx.to_numpy(dev.generator([args.seed, 7]).integers(0, num_codes, (n,)))
             if num_codes else None)
    if meta.get("clusters"):  # each cluster with its share of the training images
        from dlx.cli.gan import draw_clusters

        codes = draw_clusters(meta["cluster_frequencies"], n, [args.seed, 7])
    labels = dev.asarray(asked) if conditional else None if codes is None else dev.asarray(codes)
    images = sample(generator, z, labels=labels)
    stored = np.clip(np.rint(np.asarray(images)[:, 0] * 255.0), 0, 255).astype(np.uint8)
    _, fake_logits = metrics.classifier_scores(
        classifier, stored[:, None].astype(np.float32) / 255.0, device=dev)
    _, real_logits = metrics.classifier_scores(
        classifier, test.data[:n, None].astype(np.float32) / 255.0, device=dev)
    real = figures(metrics.softmax(real_logits), asked=np.asarray(test.targets[:n]))
    fake = figures(metrics.softmax(fake_logits), asked=asked if conditional else None)
    if codes is not None:
        fake["code_purity"] = metrics.code_purity(codes, fake_logits.argmax(axis=1))
    report = {"generator": args.checkpoint, "epoch": meta.get("epoch"), "conditional": conditional,
              "info_codes": num_codes or None, "clusters": meta.get("clusters"),
              "classifier": args.classifier, "num": n, "seed": args.seed,
              "generated": fake, "real_test": real,
              "inception_score_ratio": fake["inception_score"] / real["inception_score"],
              "frechet_distance": metrics.frechet_distance(fake_logits, real_logits)}
    print(f"{os.path.basename(args.checkpoint)} (epoch {meta.get('epoch', '?')}) judged by "
          f"{args.classifier}, {n} samples and {n} real test digits")
    print(f"{'':22s} {'generated':>10s} {'real test':>10s}")
    for key in ("inception_score", "class_entropy", "mean_prediction_entropy", "confidence_below_0.9",
                "read_as_asked", "code_purity"):
        if key in fake:
            print(f"{key:22s} {fake[key]:10.4f} {real[key]:10.4f}" if key in real
                  else f"{key:22s} {fake[key]:10.4f}")
    print(f"IS ratio generated / real {report['inception_score_ratio']:.4f}; Fréchet distance "
          f"(logits) {report['frechet_distance']:.3f}")
    if args.samples:
        arrays = {"images": stored, **({"labels": asked.astype(np.uint8)} if conditional else {}),
                  **({"clusters" if meta.get("clusters") else "codes": codes.astype(np.uint8)}
                     if codes is not None else {})}
        _write_atomically(args.samples, lambda f: np.savez_compressed(f, **arrays))
        print(f"wrote {args.samples}: {n} samples, uint8")
    if args.json:
        _write_atomically(args.json, lambda f: f.write(json.dumps(report, indent=1).encode()))
        print(f"wrote {args.json}")
    return 0
