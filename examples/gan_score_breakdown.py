"""Why a GAN's Inception score is what it is: diversity versus confidence.

IS = exp(H(mean p) - mean H(p | x)): the entropy of the classes the samples fall in (at most
ln 10 = 2.303 for ten balanced digits) minus the mean entropy of the classifier's prediction
for one sample (0 when every sample is read with certainty). This script splits the score of
a generator checkpoint and of real test digits into those two parts, and counts the samples
the classifier reads with confidence under 0.9, so one sees whether a low score comes from
missing digits (mode collapse) or from ambiguous ones.

    python examples/gan_score_breakdown.py examples/results/gan_dcgan/generator_ema.npz \\
        --classifier examples/results/lenet5_mnist/model.npz --data-dir .data
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import dlx
from dlx import metrics
from dlx.cli.gan import load_classifier
from dlx.cli.gan_score import figures
from dlx.data import MNIST
from dlx.models import GAN_MODELS
from dlx.serialization import read
from dlx.training import sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generator", help="generator checkpoint written by dlx gan")
    p.add_argument("--classifier", required=True, help="LeNet-5 MNIST checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num", type=int, default=2000, help="samples and test digits scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    dev = dlx.device(args.device)
    meta = read(args.generator)[0].get("meta", {})
    gen_args = meta.get("args", {})
    gen_cls = GAN_MODELS[meta.get("architecture", "dcgan")][0]
    width = {} if gen_args.get("channels") is None else {"channels": gen_args["channels"]}
    generator = gen_cls(latent_dim=meta.get("latent_dim", 100), device=dev, **width)
    dlx.load(args.generator, generator, restore_rng=False)
    classifier = load_classifier(args.classifier, dev)

    test = MNIST(root=args.data_dir, train=False)
    z = np.random.default_rng(args.seed).standard_normal((args.num, generator.latent_dim))
    results = {}
    for name, images in (("real test digits", test.data[:args.num, None].astype(np.float32) / 255),
                         ("generator", sample(generator, z.astype(np.float32)))):
        _, logits = metrics.classifier_scores(classifier, images, device=dev)
        results[name] = figures(metrics.softmax(logits))
    print(f"{args.num} images each; class entropy at most ln 10 = {np.log(10):.3f}")
    for name, r in results.items():
        print(f"{name:17s} IS {r['inception_score']:.3f} = exp({r['class_entropy']:.3f} - "
              f"{r['mean_prediction_entropy']:.3f}); confidence < 0.9: "
              f"{r['confidence_below_0.9']:.1%}; classes {r['class_frequencies']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"generator": args.generator, "classifier": args.classifier,
                       "num": args.num, "seed": args.seed, **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
