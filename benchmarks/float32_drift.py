"""How far apart two float32 training curves may be and still be "the same run".

Training is chaotic: two runs that differ only in float rounding (a different device, a
different summation order) drift apart, and the gap grows with the number of steps. To say
that the CUDA curve equals the CPU curve "within float32 drift", this script measures that
drift on the CPU alone: it runs a `dlx` command unchanged, or with every initial weight
multiplied by (1 + eps * N(0, 1)) (eps 1e-7: about one float32 rounding step), and compares
per-epoch records.

    # the CPU run, and the same run with the weights nudged by one rounding step
    python benchmarks/float32_drift.py run --out runs/cpu -- \\
        train lenet5 --dataset cifar10 --data-dir .data --epochs 10 --quiet
    python benchmarks/float32_drift.py run --perturb 1e-7 --out runs/cpu_nudged -- \\
        train lenet5 --dataset cifar10 --data-dir .data --epochs 10 --quiet
    # largest per-epoch gaps: CUDA vs CPU, next to CPU vs nudged CPU
    python benchmarks/float32_drift.py compare runs/cpu/history.json \\
        examples/results/lenet5_cifar10_cuda/history.json runs/cpu_nudged/history.json

`run` passes everything after `--` to the `dlx` command (`train` or `gan`) and sets its
`--out`. `compare` reads `history.json` (dlx train) or `scores.json` (dlx gan) files; the
first is the reference, and it prints, for every per-epoch number the files share, the
largest absolute gap of each other file to the reference over the epochs they share
(`--json PATH` writes the same table).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _nudge(model, eps: float, seed: int) -> None:
    """Multiply every parameter by (1 + eps * N(0, 1)), with NumPy's own generator so that
    dlx's random streams (data order, dropout, noise) stay as in the plain run."""
    import dlx

    rng = np.random.default_rng(seed)
    for p in model.parameters():
        host = dlx.to_numpy(p.data)
        nudged = host.astype(np.float64) * (1.0 + eps * rng.standard_normal(host.shape))
        p.data = dlx.asarray(nudged.astype(host.dtype), device=p.device)


def _nudging(cls, eps: float, seed: int):
    class Nudged(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _nudge(self, eps, seed)

    Nudged.__name__ = Nudged.__qualname__ = cls.__name__  # same class name in checkpoints
    return Nudged


def run(args) -> int:
    import dlx.cli

    argv = list(args.dlx_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0] not in ("train", "gan"):
        raise SystemExit("float32_drift.py run: give a dlx command after --, e.g. "
                         "-- train lenet5 --dataset cifar10 --epochs 10")
    if "--out" in argv:
        raise SystemExit("float32_drift.py run: set the output folder with run's own --out")
    if args.perturb:
        from dlx import models

        # every model the two commands build: LeNet-5 for train, the GAN pair for gan
        models.LeNet5 = _nudging(models.LeNet5, args.perturb, args.seed)
        models.GAN_MODELS = {name: (_nudging(g, args.perturb, args.seed),
                                    _nudging(d, args.perturb, args.seed + 1))
                             for name, (g, d) in models.GAN_MODELS.items()}
    return dlx.cli.main(argv + ["--out", args.out])


def _epochs(path) -> dict:
    """{metric: {epoch: value}} from a history.json or scores.json."""
    with open(path) as f:
        data = json.load(f)
    if "epochs" in data and isinstance(data["epochs"], list):  # dlx gan's scores.json
        rows = data["epochs"]
        return {k: {r["epoch"]: r[k] for r in rows if isinstance(r.get(k), (int, float))}
                for k in rows[0] if k != "epoch"} if rows else {}
    epochs = data.get("epoch")
    if not isinstance(epochs, list):
        raise SystemExit(f"{path}: neither a dlx train history.json nor a dlx gan scores.json")
    return {k: dict(zip(epochs, v)) for k, v in data.items()
            if isinstance(v, list) and k != "epoch" and len(v) == len(epochs)}


SKIP = ("time_s", "images_per_s", "lr")  # timings differ by design; lr is the same schedule


def compare(args) -> int:
    ref = _epochs(args.files[0])
    table = {}
    for other_path in args.files[1:]:
        other = _epochs(other_path)
        gaps = {}
        for key in sorted(set(ref) & set(other)):
            if key in SKIP:
                continue
            common = sorted(set(ref[key]) & set(other[key]))
            if common:
                diffs = [abs(ref[key][e] - other[key][e]) for e in common]
                worst = int(np.argmax(diffs))
                gaps[key] = {"max_abs_gap": diffs[worst], "at_epoch": common[worst],
                             "epochs": len(common), "last_gap": diffs[-1]}
        table[other_path] = gaps
    print(f"reference: {args.files[0]}")
    for path, gaps in table.items():
        print(f"\n{path}")
        print(f"  {'metric':28s} {'max |gap|':>10s} {'at epoch':>9s} {'last gap':>10s} {'epochs':>7s}")
        for key, g in gaps.items():
            print(f"  {key:28s} {g['max_abs_gap']:10.4g} {g['at_epoch']:9d} {g['last_gap']:10.4g} "
                  f"{g['epochs']:7d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": args.files[0], "gaps": table}, f, indent=1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a dlx command, optionally with nudged initial weights")
    r.add_argument("--perturb", type=float, default=0.0, metavar="EPS",
                   help="relative size of the nudge (0: the plain run; 1e-7: one float32 step)")
    r.add_argument("--seed", type=int, default=12345, help="seed of the nudge")
    r.add_argument("--out", required=True, help="the dlx command's output folder")
    r.add_argument("dlx_args", nargs=argparse.REMAINDER, help="-- then the dlx command")
    c = sub.add_parser("compare", help="largest per-epoch gaps of records to the first one")
    c.add_argument("files", nargs="+", help="history.json / scores.json; the first is the reference")
    c.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.command == "compare" and len(args.files) < 2:
        p.error("compare needs a reference and at least one other file")
    return run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
