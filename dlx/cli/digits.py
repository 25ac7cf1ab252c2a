"""``dlx digits IMAGE --model CKPT``: find and read the handwritten digits in a picture and
write it annotated (``dlx.apps.digits``)."""

from __future__ import annotations

import os
import sys
import time


def register(subparsers):
    d = subparsers.add_parser("digits", help="find and read handwritten digits in a picture")
    d.add_argument("image", help="PNG, JPEG, ... of dark digits on light paper")
    d.add_argument("--model", required=True, metavar="CKPT",
                   help="an MNIST LeNet-5 checkpoint (dlx train lenet5 --dataset mnist)")
    d.add_argument("--out", default=None, help="annotated PNG (default: IMAGE_digits.png beside IMAGE)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: DLX_DEVICE or cpu)")
    d.add_argument("--invert", action="store_true", help="light digits on a dark ground")
    d.set_defaults(func=run)
    return d


def run(args) -> int:
    """Find and read the handwritten digits in a picture; write it annotated."""
    import dlx
    from dlx import plots
    from dlx.apps import digits as D

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
