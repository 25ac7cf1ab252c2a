"""Seeing inside the trained CIFAR-10 LeNet-5 with dlx.apps.viz (Zeiler & Fergus 2014).

    python examples/viz_cifar10.py --data-dir .data --out runs/viz_cifar10

Loads the checkpoint (default: the augmented LeNet-5 run, 72 % test accuracy), takes the
first test image of each class and writes to OUT:

- filters.png                  the six 5x5 first-layer filters (RGB and per channel)
- feature_maps.png             one image's conv1 and conv2 feature maps (after ReLU)
- saliency.png                 |d logit(true class) / d pixel| for the ten images
- occlusion.png                drop in p(true class) as a grey 8x8 patch slides over them
- activation_maximisation.png  an image per class found by gradient ascent on its logit
- viz_cifar10.json             the images' labels and predictions, per-map numbers, timings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as dlx.cli.common.NORMALIZATION
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                  "lenet5_cifar10_aug", "model.npz")


def centre_fraction(m: np.ndarray) -> float:
    """Share of a non-negative map's mass in the central half (16x16 of 32x32) of the image."""
    h, w = m.shape
    total = float(m.sum())
    return float(m[h // 4 : h - h // 4, w // 4 : w - w // 4].sum()) / total if total > 0 else 0.0


def occlusion_centre_fraction(m: np.ndarray, patch: int, stride: int, size: int = 32) -> float:
    """Share of the positive drops whose patch centre lies in the central half of the image."""
    centres = np.arange(m.shape[0]) * stride + (patch - 1) / 2
    inside = (centres >= size / 4 - 0.5) & (centres <= size - size / 4 - 0.5)
    pos = np.clip(m, 0, None)
    total = float(pos.sum())
    return float(pos[np.ix_(inside, inside)].sum()) / total if total > 0 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--data-dir", default=os.environ.get("DLX_DATA_DIR", ".data"),
                    help="folder with cifar10/ (default DLX_DATA_DIR, else .data)")
    ap.add_argument("--out", default="runs/viz_cifar10")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--patch", type=int, default=8, help="occlusion patch size (pixels)")
    ap.add_argument("--stride", type=int, default=2, help="occlusion stride (pixels)")
    ap.add_argument("--steps", type=int, default=256, help="activation-maximisation steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import dlx
    from dlx.apps import viz
    from dlx.data import CIFAR10
    from dlx.models import LeNet5
    from dlx.nn import functional as F

    t_start = time.perf_counter()
    dev = dlx.device(args.device)
    model = LeNet5(device=dev)
    dlx.load(args.checkpoint, model, restore_rng=False)
    model.eval()
    test = CIFAR10(root=args.data_dir, train=False)
    classes = list(test.classes)
    idx = [int(np.flatnonzero(test.targets == c)[0]) for c in range(len(classes))]
    labels = [int(test.targets[i]) for i in idx]
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    x_np = ((test.data[idx].astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    x = dlx.asarray(np.ascontiguousarray(x_np), device=dev)
    shown = viz.to_display(x, MEAN, STD)
    with dlx.no_grad():
        logits = dlx.to_numpy(model(x)).astype(np.float64)
    probs = F.softmax(logits, dim=1)
    preds = probs.argmax(1)
    titles = [f"{classes[y]}\npred {classes[p]} ({probs[k, p]:.2f})"
              for k, (y, p) in enumerate(zip(labels, preds))]
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    timings, written = {}, []
    name = os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))

    t = time.perf_counter()
    filters = viz.first_layer_filters(model, raw=True)
    timings["filters"] = time.perf_counter() - t
    written.append(viz.plot_filters(filters, out("filters.png"),
                                    title=f"LeNet-5 ({name}): first-layer filters, 6 @ 5x5x3"))

    feat = next((k for k in range(len(idx)) if preds[k] == labels[k]), 0)
    t = time.perf_counter()
    maps = viz.feature_maps(model, x[feat : feat + 1, ...], layers=["1:ReLU", "4:ReLU"])
    timings["feature_maps"] = time.perf_counter() - t
    written.append(viz.plot_feature_maps(
        shown[feat], maps, out("feature_maps.png"),
        title=f"Feature maps of test image {idx[feat]} ({classes[labels[feat]]}): "
              "conv1 and conv2 after ReLU"))

    t = time.perf_counter()
    sal = viz.saliency(model, x, labels)
    timings["saliency"] = time.perf_counter() - t
    written.append(viz.plot_saliency(
        shown, sal, out("saliency.png"), titles=titles,
        title="Saliency: |d logit(true class) / d input| (max over RGB), first test image of each class"))

    grey = ((0.5 - mean) / std).tolist()
    t = time.perf_counter()
    occ = np.stack([viz.occlusion(model, x[k, ...], labels[k], patch=args.patch, stride=args.stride,
                                  fill=grey) for k in range(len(idx))])
    timings["occlusion"] = time.perf_counter() - t
    written.append(viz.plot_occlusion(
        shown, occ, out("occlusion.png"), args.patch, args.stride, titles=titles,
        title=f"Occlusion: drop in p(true class) when a grey {args.patch}x{args.patch} patch "
              f"covers each spot (red: the patch hid evidence)"))

    lo, hi = ((0.0 - mean) / std).tolist(), ((1.0 - mean) / std).tolist()
    t = time.perf_counter()
    am, scores = viz.activation_maximisation(model, range(len(classes)), shape=(3, 32, 32),
                                             steps=args.steps, lr=0.05, l2=1e-2, blur=0.3,
                                             bounds=(lo, hi), seed=args.seed, device=dev)
    timings["activation_maximisation"] = time.perf_counter() - t
    with dlx.no_grad():
        am_logits = dlx.to_numpy(model(dlx.asarray(am, device=dev))).astype(np.float64)
    am_probs = F.softmax(am_logits, dim=1)
    am_titles = [f"{c}\nlogit {scores[-1, k]:.1f}, p {am_probs[k, k]:.2f}" for k, c in enumerate(classes)]
    written.append(viz.plot_activation_maximisation(
        viz.to_display(am, MEAN, STD), out("activation_maximisation.png"), titles=am_titles,
        scores=scores,
        title=f"Activation maximisation: {args.steps} steps of gradient ascent on each class logit "
              "(L2 decay, a little blur each step, pixels kept in [0, 1])"))

    uniform_occ = occlusion_centre_fraction(np.ones(occ.shape[1:]), args.patch, args.stride)
    wall = time.perf_counter() - t_start
    result = {
        "checkpoint": os.path.relpath(args.checkpoint), "device": str(dev), "wall_time_s": round(wall, 2),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "occlusion": {"patch": args.patch, "stride": args.stride, "fill": "grey (pixel 0.5)"},
        "activation_maximisation": {
            "steps": args.steps, "lr": 0.05, "l2": 1e-2, "blur": 0.3, "seed": args.seed,
            "initial_logit": [round(float(v), 3) for v in scores[0]],
            "final_logit": [round(float(v), 3) for v in scores[-1]],
            "final_p_target": [round(float(am_probs[k, k]), 4) for k in range(len(classes))],
        },
        "feature_maps_image": idx[feat],
        "notes": {
            "saliency_centre_fraction": "share of the saliency in the central 16x16 pixels "
                                        "(a uniform map gives 0.25)",
            "occlusion_max_drop_at_row_col": "pixel (row, col) of the centre of the patch that "
                                             "lowered p(true class) most",
            "occlusion_centre_fraction": "share of the positive drops at patch centres in the "
                                         f"central 16x16 (a uniform map gives {uniform_occ:.3f})",
        },
        "images": [
            {"test_index": i, "label": classes[y], "predicted": classes[int(p)],
             "p_true": round(float(probs[k, y]), 4),
             "saliency_centre_fraction": round(centre_fraction(sal[k]), 3),
             "occlusion_max_drop": round(float(occ[k].max()), 4),
             "occlusion_max_drop_at_row_col": [
                 int(v) * args.stride + (args.patch - 1) / 2
                 for v in np.unravel_index(occ[k].argmax(), occ[k].shape)],
             "occlusion_centre_fraction": round(occlusion_centre_fraction(occ[k], args.patch,
                                                                          args.stride), 3)}
            for k, (i, y, p) in enumerate(zip(idx, labels, preds))
        ],
        "files": [os.path.basename(p) for p in written],
    }
    with open(out("viz_cifar10.json"), "w") as f:
        json.dump(result, f, indent=1)
    correct = int((preds == np.asarray(labels)).sum())
    print(f"{correct}/10 of the images classified correctly; wrote {', '.join(result['files'])} "
          f"to {args.out} in {wall:.1f} s on {dev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
