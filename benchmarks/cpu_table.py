"""Issue 12's table: dlx on the CPU against PyTorch (NCHW and channels_last), row by row.

    python benchmarks/cpu_table.py [--rounds 3] [--reps 8] [--rows lenet_train,dcgan_train]
                                   [--threads 2] [--warm-s 0.25] [--json out.json]

Three long-lived worker processes (dlx, PyTorch NCHW, PyTorch channels_last), each with the
same thread count (dlx: Numba threads and its BLAS rule from backends/cpu/threads.py;
PyTorch: ``torch.set_num_threads``). The controller runs the rows in interleaved rounds: in
each round, for each row, every worker times ``--reps`` calls in turn (the order rotated per
round), one worker at a time, with a short pause between workers so that idle OpenMP/BLAS
threads of the previous one have gone to sleep. Before its timed calls, each worker runs the
row untimed for ``--warm-s`` seconds: after the pause the cores come back from idle slowly (on
the 2-core AMD EPYC VM, 2026-12-01, a one-thread 256x256 matmul loop ran 10.5 ms in its first
call after a 0.3 s sleep and 9.0 ms for the next ~80 ms, against 7.5 ms steady; medians of
15 sleeps), and 8 calls timed from cold measured the machine more than the code (the dlx
LeNet-5 row: 13.7-15.4 ms with 8 cold calls, 9.7 ms with 30, in one hour). A row's figure per
worker is the median over rounds of its per-round median (and the best single call). The
ratio is dlx's speed over the faster PyTorch layout (> 1: dlx is faster). The load average is
printed before and after each row of each round, since the machine is shared.

Rows (batch in brackets): the LeNet-5 training step (128, Adam, no input gradient on either
side), LeNet-5 inference (10,000 images in batches of 1000), the DCGAN training step (64,
generator and discriminator, Adam; dlx.training.gan.gan_step and the same step in PyTorch;
again at 128, the batch of graph_epoch.py's DCGAN epoch),
ConvTranspose2d 128->64 4x4/2 on 7x7 (64), Conv2d 64->128 4x4/2 on 14x14 (64), Conv2d
64->64 3x3 pad 1 on 32x32 (128) and Linear 4096->4096 (256), each layer forward + full
backward (input and parameter gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROWS = {
    "lenet_train": "LeNet-5 train step (128, Adam, no input grad)",
    "lenet_infer": "LeNet-5 inference (10,000 images, batch 1000)",
    "dcgan_train": "DCGAN train step (64, both nets, Adam)",
    "dcgan_train128": "DCGAN train step (128: the DCGAN epoch's batch)",
    "convt_s2": "ConvTranspose2d 128->64 4x4/2, 7x7, fwd+bwd (64)",
    "conv_s2": "Conv2d 64->128 4x4/2, 14x14, fwd+bwd (64)",
    "conv3x3": "Conv2d 64->64 3x3 pad 1, 32x32, fwd+bwd (128)",
    "linear4096": "Linear 4096->4096 fwd+bwd (256)",
}
# Layer rows: (kind, in, out, kernel, stride, padding, batch, H)
LAYERS = {
    "convt_s2": ("convt", 128, 64, 4, 2, 1, 64, 7),
    "conv_s2": ("conv", 64, 128, 4, 2, 1, 64, 14),
    "conv3x3": ("conv", 64, 64, 3, 1, 1, 128, 32),
    "linear4096": ("linear", 4096, 4096, 0, 0, 0, 256, 0),
}
WORKERS = ("dlx", "torch", "torch_cl")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- dlx worker


def dlx_rows():
    import numpy as np

    import dlx
    from dlx import nn, optim
    from dlx.models import DCGANDiscriminator, DCGANGenerator, LeNet5
    from dlx.training.gan import gan_step

    rng = np.random.default_rng(0)

    def arr(shape):
        return dlx.asarray(rng.standard_normal(shape), dtype="float32")

    def lenet_train():
        dlx.manual_seed(0)
        m = LeNet5()
        opt = optim.Adam(m.parameters(), lr=1e-3)
        lf = nn.CrossEntropyLoss()
        x, y = arr((128, 3, 32, 32)), dlx.asarray(rng.integers(0, 10, 128))

        def step():
            lf(m(x), y)
            m.backward_params(lf.backward())
            opt.step()
            opt.zero_grad()
        return step

    def lenet_infer():
        dlx.manual_seed(0)
        m = LeNet5().eval()
        xs = [arr((1000, 3, 32, 32)) for _ in range(10)]

        def run():
            with dlx.no_grad():
                for x in xs:
                    m(x)
        return run

    def dcgan_train(batch):
        dlx.manual_seed(0)
        g, d = DCGANGenerator(), DCGANDiscriminator()
        og = optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        od = optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        real = dlx.asarray(np.tanh(rng.standard_normal((batch, 1, 28, 28))), dtype="float32")
        z = arr((batch, 100))
        return lambda: gan_step(g, d, real, z, og, od)

    def layer(name):
        kind, cin, cout, k, s, p, n, h = LAYERS[name]
        dlx.manual_seed(0)
        if kind == "linear":
            m, x = nn.Linear(cin, cout), arr((n, cin))
        elif kind == "conv":
            m, x = nn.Conv2d(cin, cout, k, stride=s, padding=p), arr((n, cin, h, h))
        else:
            m, x = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p), arr((n, cin, h, h))
        dy = arr(m(x).shape)
        m.backward(dy)

        def run():
            m.zero_grad()
            m(x)
            m.backward(dy)
        return run

    makers = {"lenet_train": lenet_train, "lenet_infer": lenet_infer,
              "dcgan_train": lambda: dcgan_train(64), "dcgan_train128": lambda: dcgan_train(128)}
    return lambda name: makers[name]() if name in makers else layer(name)


# ----------------------------------------------------------------------------- torch worker


def torch_rows(channels_last: bool):
    import numpy as np
    import torch
    from torch import nn

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rng = np.random.default_rng(0)

    def arr(shape, grad=False):
        t = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        if t.dim() == 4:
            t = t.contiguous(memory_format=fmt)
        return t.requires_grad_(grad)

    def lenet():
        return nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
            nn.ReLU(), nn.Linear(84, 10)).to(memory_format=fmt)

    def lenet_train():
        torch.manual_seed(0)
        m = lenet()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        lf = nn.CrossEntropyLoss()
        x, y = arr((128, 3, 32, 32)), torch.from_numpy(rng.integers(0, 10, 128))

        def step():
            lf(m(x), y).backward()
            opt.step()
            opt.zero_grad()
        return step

    def lenet_infer():
        torch.manual_seed(0)
        m = lenet().eval()
        xs = [arr((1000, 3, 32, 32)) for _ in range(10)]

        def run():
            with torch.no_grad():
                for x in xs:
                    m(x)
        return run

    def dcgan_train(batch):
        torch.manual_seed(0)
        g = nn.Sequential(
            nn.Linear(100, 128 * 49, bias=False), nn.Unflatten(1, (128, 7, 7)), nn.BatchNorm2d(128),
            nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(), nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh()).to(memory_format=fmt)
        d = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 128, 4, 2, 1, bias=False),
            nn.BatchNorm2d(128), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(128 * 49, 1)
        ).to(memory_format=fmt)
        og = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        od = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        lf = nn.BCEWithLogitsLoss()
        real = torch.tanh(arr((batch, 1, 28, 28)))
        z = arr((batch, 100))

        def step():
            fake = g(z)
            od.zero_grad()
            out = d(real)
            lf(out, torch.ones_like(out)).backward()
            out = d(fake.detach())
            lf(out, torch.zeros_like(out)).backward()
            od.step()
            og.zero_grad()
            d.requires_grad_(False)
            out = d(fake)
            lf(out, torch.ones_like(out)).backward()
            d.requires_grad_(True)
            og.step()
        return step

    def layer(name):
        kind, cin, cout, k, s, p, n, h = LAYERS[name]
        torch.manual_seed(0)
        if kind == "linear":
            m, x = nn.Linear(cin, cout), arr((n, cin), grad=True)
        elif kind == "conv":
            m, x = nn.Conv2d(cin, cout, k, s, p), arr((n, cin, h, h), grad=True)
        else:
            m, x = nn.ConvTranspose2d(cin, cout, k, s, p), arr((n, cin, h, h), grad=True)
        m = m.to(memory_format=fmt)
        dy = arr(tuple(m(x).shape))

        def run():
            m.zero_grad()
            x.grad = None
            m(x).backward(dy)
        return run

    makers = {"lenet_train": lenet_train, "lenet_infer": lenet_infer,
              "dcgan_train": lambda: dcgan_train(64), "dcgan_train128": lambda: dcgan_train(128)}
    return lambda name: makers[name]() if name in makers else layer(name)


def worker(kind: str, threads: int) -> None:
    os.environ.setdefault("DLX_NUM_THREADS", str(threads))
    if kind == "dlx":
        make = dlx_rows()
        info = {}
    else:
        import torch

        torch.set_num_threads(threads)
        make = torch_rows(kind == "torch_cl")
        info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    built = {}
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        name, reps = req["row"], req["reps"]
        if name not in built:
            built[name] = make(name)
            built[name]()  # warm-up (compiles, allocates)
            built[name]()
        fn = built[name]
        warm_until = time.perf_counter() + req.get("warm_s", 0.0)
        while time.perf_counter() < warm_until:  # untimed: the cores come back from idle
            fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times}), flush=True)


# ----------------------------------------------------------------------------- controller


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-s", type=float, default=0.25,
                    help="untimed calls for this long before each worker's timed calls")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.threads)
    rows = args.rows.split(",")
    env = dict(os.environ, DLX_NUM_THREADS=str(args.threads))
    procs = {}
    for w in WORKERS:
        procs[w] = subprocess.Popen(
            [sys.executable, __file__, "--worker", w, "--threads", str(args.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    info = {w: json.loads(procs[w].stdout.readline()) for w in WORKERS}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads {args.threads}, torch {info['torch'].get('torch')}; load at start {load()}")
    per = {r: {w: [] for w in WORKERS} for r in rows}
    best = {r: {w: float("inf") for w in WORKERS} for r in rows}
    loads = []
    for rnd in range(args.rounds):
        for r in rows:
            before = load()
            order = WORKERS[rnd % 3:] + WORKERS[:rnd % 3]
            for w in order:
                procs[w].stdin.write(json.dumps({"row": r, "reps": args.reps,
                                                 "warm_s": args.warm_s}) + "\n")
                procs[w].stdin.flush()
                times = json.loads(procs[w].stdout.readline())["times"]
                per[r][w].append(statistics.median(times))
                best[r][w] = min(best[r][w], min(times))
                time.sleep(0.3)  # let the idle threads of this worker go to sleep
            after = load()
            loads.append({"round": rnd, "row": r, "before": before, "after": after})
            print(f"round {rnd} {r:12s} " + "  ".join(
                f"{w} {per[r][w][-1] * 1e3:7.2f}" for w in WORKERS) + f"   load {before} -> {after}",
                flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    print(f"\n# load at end {load()}")
    print("| work (batch) | dlx ms | PyTorch NCHW / channels_last ms | dlx speed / PyTorch's best |")
    print("|---|---|---|---|")
    result = {"threads": args.threads, "rounds": args.rounds, "reps": args.reps,
              "warm_s": args.warm_s,
              "torch": info["torch"].get("torch"), "loads": loads, "rows": {}}
    for r in rows:
        med = {w: statistics.median(per[r][w]) * 1e3 for w in WORKERS}
        mn = {w: best[r][w] * 1e3 for w in WORKERS}
        fast = min(med["torch"], med["torch_cl"])
        ratio = fast / med["dlx"]
        result["rows"][r] = {"label": ROWS[r], "median_ms": med, "min_ms": mn,
                             "per_round_ms": {w: [t * 1e3 for t in per[r][w]] for w in WORKERS},
                             "ratio": ratio}
        print(f"| {ROWS[r]} | {med['dlx']:.1f} (min {mn['dlx']:.1f}) | {med['torch']:.1f} / "
              f"{med['torch_cl']:.1f} (min {mn['torch']:.1f} / {mn['torch_cl']:.1f}) | {ratio:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
