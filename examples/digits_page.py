"""Handwritten digits in a photo: pages made from real MNIST test digits, read by `dlx digits`.

    python examples/digits_page.py --data-dir .data                  # 20 pages
    python examples/digits_page.py --data-dir .data --pages 0        # every test digit once

Each page holds 20-40 MNIST test digits (each used once, in a seeded shuffle), scaled to
30-60 px, blurred, dark ink on unevenly lit paper with noise (dlx.apps.digits.synthetic_page).
The first page is written as OUT/page.png and run through the command itself
(`dlx digits OUT/page.png --model CKPT --out OUT/annotated.png`); then every page is read
by the same pipeline and scored against its truth: a digit is *found* when a box matches
it (IoU >= 0.5, or the box's centre inside it) and *read* when that box's digit is right.
Prints the rates, the model's accuracy on the same digits as clean 28x28 images (the
ceiling), and writes OUT/digits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "results", "lenet5_mnist", "model.npz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=20, help="pages to score (0: all the test digits)")
    ap.add_argument("--model", default=MODEL, help="MNIST LeNet-5 checkpoint")
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default DLX_DATA_DIR)")
    ap.add_argument("--npz", default=None, help="digits from an .npz (images, labels) instead of MNIST")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/digits")
    args = ap.parse_args(argv)

    import numpy as np

    import dlx
    from dlx.apps import digits as D
    from dlx.cli import main as dlx_main

    if args.npz:
        with np.load(args.npz) as f:
            images, labels = f["images"], f["labels"].astype(np.int64)
    else:
        mnist = dlx.data.MNIST(root=args.data_dir, train=False)
        images, labels = mnist.data, mnist.targets
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    chunks, start = [], 0
    while start < len(order) and (args.pages <= 0 or len(chunks) < args.pages):
        n = int(rng.integers(20, 41))
        chunks.append(order[start:start + n])
        start += n
    os.makedirs(args.out, exist_ok=True)
    dev = dlx.device(args.device)
    model = D.load_mnist_model(args.model, device=dev)

    total = {"digits": 0, "found": 0, "read": 0, "false": 0}
    misread, missed, worst = [], [], 1.0
    seconds, t_start = 0.0, time.perf_counter()
    for p, idx in enumerate(chunks):
        page, boxes, truth = D.synthetic_page(images[idx], labels[idx], np.random.default_rng([args.seed, p]))
        page = np.round(page * 255) / 255  # what the command sees once the page is a PNG
        if p == 0:
            D.save_image(page, os.path.join(args.out, "page.png"))
            rc = dlx_main(["digits", os.path.join(args.out, "page.png"), "--model", args.model,
                           "--out", os.path.join(args.out, "annotated.png")]
                          + (["--device", args.device] if args.device else []))
            if rc:
                return rc
        t0 = time.perf_counter()
        results = D.read_digits(page, model)
        seconds += time.perf_counter() - t0
        s = D.score_page(results, boxes, truth)
        for k in total:
            total[k] += s[k]
        worst = min(worst, s["read"] / s["digits"])
        misread += [f"{idx[i]}: {truth[i]} read as {results[s['match'][i]][1]}" for i in s["misread"]]
        missed += [f"{idx[i]}: {truth[i]}" for i in s["missed"]]
    used = np.concatenate(chunks)
    clean, _ = D.classify(images[used] / 255.0, model)
    clean_acc = float(np.mean(clean == labels[used]))
    found, read = total["found"] / total["digits"], total["read"] / total["digits"]
    print(f"{len(chunks)} pages, {total['digits']} digits: found {found:.2%}, read {read:.2%} "
          f"(worst page {worst:.0%}), {total['false']} false detections; "
          f"{seconds / len(chunks):.2f} s per page on {dev}")
    print(f"the model on the same digits as clean 28x28 MNIST images: {clean_acc:.2%}")
    with open(os.path.join(args.out, "digits.json"), "w") as f:
        json.dump({"source": args.npz or "MNIST test set", "seed": args.seed, "pages": len(chunks),
                   **total, "found_rate": found, "read_rate": read, "worst_page_read_rate": worst,
                   "clean_accuracy": clean_acc, "seconds_per_page": seconds / len(chunks),
                   "wall_time_s": time.perf_counter() - t_start, "device": str(dev),
                   "misread (test index: true digit)": misread, "missed (test index: true digit)": missed},
                  f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
