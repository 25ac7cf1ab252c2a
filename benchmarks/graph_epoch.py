"""Epochs with dlx's captured step (compile_step, graph=True) vs eager dlx and PyTorch, on one GPU.

``dlx.compile_step(step, graph=True)`` against ``graph=False`` and PyTorch (eager,
``torch.compile``, a hand-made CUDA graph), side by side in one run:

    python benchmarks/graph_epoch.py [--device cuda] [--data-dir DIR] [--images 50000]
        [--batches 128,512] [--rounds 3] [--gan-steps 200] [--profile-steps 50]
        [--no-compile] [--quick] [--out FILE.json]

1. LeNet-5 on CIFAR-10-shaped data (the real training set from ``--data-dir`` when it has
   cifar10/, else ``--images`` random uint8 images (N, 3, 32, 32) with random labels), the
   uint8 data resident on the device, Adam lr 1e-3, for each batch size with and without
   random crop (padding 4) + horizontal flip, then Normalize. One epoch = every image once
   (shuffled; the last, shorter batch included), with the step as ``dlx.fit`` runs it:
   forward, loss, backward, optimizer step, zero_grad, the loss added to a device scalar
   (read once after the epoch: "mean loss", a check that every contender trains).
   Contenders:
   - dlx eager: ``compile_step(step, graph=False)`` over a ``dlx.data.DataLoader``;
   - dlx graph: ``compile_step(step, graph=True)``, the same loader;
   - torch eager: the same architecture in ``torch.nn``, the data a uint8 tensor on the
     device, each batch gathered from a ``randperm``, cropped and flipped per image with
     torch ops, then /255 and normalised (in the step);
   - torch compile (cuda only, not with ``--no-compile``): the conversion, model and loss
     under ``torch.compile(mode="reduce-overhead", dynamic=False)``, backward through it,
     Adam eager (foreach). Any error (no Triton, no compiler, ...) is recorded;
   - torch cudagraph (cuda only; runs too when torch.compile works): the whole step
     (conversion, model, loss, backward, ``Adam(capturable=True)`` step, loss sum) captured
     by hand in a ``torch.cuda.CUDAGraph`` per batch shape after warm-up steps on a side
     stream (as the PyTorch docs show); each batch is copied into its static inputs.
   Every contender is built and warmed up once per batch size (3 steps with a full batch
   and 3 with the last batch's shape, with each loader, so kernels are compiled and graphs
   captured before any timing; that time is reported as setup_s), then the contenders time
   one epoch each in interleaved rounds (order rotated every round), the device
   synchronised before reading the clock at both ends. Reported: the median over rounds of
   images/s, and its ratio to torch eager's.
2. DCGAN (``dlx.models.DCGANGenerator``/``DCGANDiscriminator``) on MNIST-shaped data
   (28x28x1; MNIST from ``--data-dir`` when it has mnist/, else random uint8), batch 128,
   ``--gan-steps`` steps per epoch (drop_last): dlx eager and graph through
   ``dlx.training.gan.train_gan(..., epochs=2, graph=...)`` (its first epoch captures the
   graph; the second is timed, from the callback of epoch 1 to that of epoch 2, both called
   after the epoch's losses were read back, i.e. with the device synchronised), vs the same
   step in PyTorch eager (same architecture, initialisation, Adam(2e-4, (0.5, 0.999)), noise
   drawn per step on the device, the same four loss sums). Rounds interleaved as above.
3. GPU busy fraction: ``--profile-steps`` steps of every LeNet contender (batch 128, or the
   first batch size, no augmentation, loader included) under ``torch.profiler.profile(
   activities=[CPU, CUDA])``. CUPTI records every kernel of the process, CuPy's too: the
   kernel events' device time (their union, and their plain sum) over the wall time of
   those steps (the device synchronised at both ends). The profiler slows the host, so the
   kernel time per step is also divided by the unprofiled step time of section 1
   (``busy_vs_unprofiled``). On cpu only CPU activity is recorded and "kernels" are the
   aten:: ops (a check of the code path, no GPU figure).

Every contender and section runs in its own try/except: a failure is recorded in the JSON
(``failures``) and the run goes on. ``--quick`` is a smoke run (1000 images, 2 rounds, 3 GAN
steps, 5 profiled steps); ``--device cpu --quick`` checks the logic without a GPU (dlx graph
then runs eagerly, as compile_step does on cpu; the torch graph contenders are skipped).
With the defaults the run takes about 2-4 minutes on an H100/H200, most of it compiling
(CuPy's kernels on a fresh machine, torch.compile); ``--no-compile`` saves the latter.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
LR = 1e-3
GAN_BATCH = 128
GAN_LR, GAN_BETAS = 2e-4, (0.5, 0.999)
WARM_STEPS = 3  # per shape: eager, capture, replay for a dlx graph

FAILURES: list = []
T_START = time.perf_counter()


def _say(*parts) -> None:
    print(f"[{time.perf_counter() - T_START:6.1f} s]", *parts, file=sys.stderr, flush=True)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:600]


def _fail(where: str, e: BaseException) -> str:
    msg = _error(e)
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    FAILURES.append({"where": where, "error": msg, "traceback": "".join(tb)[-3000:]})
    _say(f"  FAILED {where}: {msg}")
    return msg


# data ---------------------------------------------------------------------------------------


def cifar_data(data_dir, n: int):
    """(uint8 (N, 3, 32, 32), int64 labels (N,), description)."""
    note = ""
    if data_dir:
        try:
            from dlx.data import CIFAR10

            ds = CIFAR10(root=data_dir, train=True)
            x = np.ascontiguousarray(np.asarray(ds.data)[:n].transpose(0, 3, 1, 2))
            y = np.asarray(ds.targets[:n], dtype=np.int64)
            return x, y, f"CIFAR-10 train set, first {len(x)} images"
        except Exception as e:  # noqa: BLE001 - fall back to random images, say why
            note = f" (CIFAR-10 not read from {data_dir}: {_error(e)})"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y, f"random uint8 images, CIFAR-10 shaped, {n} images{note}"


def mnist_data(data_dir, n: int):
    """(uint8 (N, 1, 28, 28), int64 labels, description); N may be less than n for MNIST."""
    note = ""
    if data_dir:
        try:
            from dlx.data import MNIST

            ds = MNIST(root=data_dir, train=True)
            x = np.asarray(ds.data)[:n]
            x = np.ascontiguousarray(x[:, None] if x.ndim == 3 else x)
            y = np.asarray(ds.targets[:n], dtype=np.int64)
            return x, y, f"MNIST train set, first {len(x)} images"
        except Exception as e:  # noqa: BLE001
            note = f" (MNIST not read from {data_dir}: {_error(e)})"
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y, f"random uint8 images, MNIST shaped, {n} images{note}"


# the contenders: each times one epoch, synchronising the device at both ends ---------------


class Contender:
    name = "?"

    def batches(self, aug):  # one epoch of (x, y)
        raise NotImplementedError

    def step(self, x, y):
        raise NotImplementedError

    def sync(self):
        raise NotImplementedError

    def reset_loss(self):
        raise NotImplementedError

    def loss_sum(self) -> float:
        raise NotImplementedError

    def warm(self, aug, tail: int) -> None:
        """WARM_STEPS steps with a full batch and with the last batch's shape (``tail``
        images, 0: none), so that kernels, compiled code and graphs exist before timing."""
        x, y = next(iter(self.batches(aug)))
        for _ in range(WARM_STEPS):
            self.step(x, y)
        if tail and tail != int(y.shape[0]):
            xt, yt = x[0:tail, ...], y[0:tail]
            for _ in range(WARM_STEPS):
                self.step(xt, yt)
        self.sync()

    def epoch(self, aug) -> dict:
        self.reset_loss()
        self.sync()
        t0 = time.perf_counter()
        images = steps = 0
        for x, y in self.batches(aug):
            self.step(x, y)
            images += int(y.shape[0])
            steps += 1
        self.sync()
        dt = time.perf_counter() - t0
        return {
            "epoch_s": dt,
            "images": images,
            "steps": steps,
            "images_per_s": images / dt,
            "mean_loss": self.loss_sum() / max(steps, 1),
        }

    def run_steps(self, aug, n: int) -> int:
        """``n`` steps, from fresh epochs (for the profiler); returns the images seen."""
        done = images = 0
        while done < n:
            for x, y in self.batches(aug):
                self.step(x, y)
                done += 1
                images += int(y.shape[0])
                if done == n:
                    break
        return images


class DlxLeNet(Contender):
    def __init__(self, dev, loaders, graph: bool):
        import dlx
        from dlx import nn, optim
        from dlx.models import LeNet5

        self.name = "dlx graph" if graph else "dlx eager"
        self.dev, self.loaders, self.dlx = dev, loaders, dlx
        dlx.manual_seed(0)
        model = LeNet5(device=dev)
        opt = optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        xp = dev.xp
        self.sums = {"loss": xp.zeros((), dtype=xp.float32, device=dev.array_device)}
        sums = self.sums

        def step(x, y):  # as dlx.fit's train_step, the epoch's loss summed on the device
            loss = loss_fn(model(x), y)
            model.backward_params(loss_fn.backward())
            opt.step()
            opt.zero_grad()
            sums["loss"] += loss

        self.fn = dlx.compile_step(step, graph=graph)

    def batches(self, aug):
        return iter(self.loaders[aug])

    def step(self, x, y):
        self.fn(x, y)

    def sync(self):
        self.dev.synchronize()

    def reset_loss(self):
        self.sums["loss"][...] = 0

    def loss_sum(self):
        return float(self.dlx.to_numpy(self.sums["loss"]))


class TorchData:
    """The uint8 images and labels as tensors on the device, batched as the dlx loader does:
    a new permutation per epoch (on the device), crop with padding 4 at a random offset per
    image and a horizontal flip with probability 1/2 per image, on the uint8 batch."""

    def __init__(self, torch, dev, x, y):
        self.torch, self.dev = torch, dev
        self.x = torch.from_numpy(x).to(dev)
        self.y = torch.from_numpy(y).to(dev)
        self.n = len(x)
        self._ar = torch.arange(x.shape[-1], device=dev)
        self._ch = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)

    def crop_flip(self, xb, pad: int = 4):
        torch = self.torch
        n, _, h, w = xb.shape
        p = torch.nn.functional.pad(xb, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n, 1), device=self.dev)
        ox = torch.randint(0, 2 * pad + 1, (n, 1), device=self.dev)
        flip = torch.rand((n, 1), device=self.dev) < 0.5
        ar = self._ar[:w]
        rows = oy + self._ar[:h]
        cols = torch.where(flip, ox + (w - 1) - ar, ox + ar)
        img = torch.arange(n, device=self.dev).view(n, 1, 1, 1)
        return p[img, self._ch, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def batches(self, batch: int, aug: bool, drop_last: bool = False):
        perm = self.torch.randperm(self.n, device=self.dev)
        stop = self.n - self.n % batch if drop_last else self.n
        for lo in range(0, stop, batch):
            idx = perm[lo : lo + batch]
            xb = self.x.index_select(0, idx)
            yield (self.crop_flip(xb) if aug else xb), self.y.index_select(0, idx)


def torch_lenet(nn):
    """dlx.models.LeNet5 in torch.nn (same layers, same order)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


class TorchLeNet(Contender):
    """mode: "eager", "compile" (torch.compile reduce-overhead) or "cudagraph" (by hand)."""

    def __init__(self, torch, data: TorchData, batch: int, mode: str):
        self.name = f"torch {mode}"
        self.torch, self.data, self.batch, self.mode = torch, data, batch, mode
        dev = data.dev
        torch.manual_seed(0)
        model = torch_lenet(torch.nn).to(dev)
        self.opt = torch.optim.Adam(model.parameters(), lr=LR, capturable=mode == "cudagraph")
        mean = torch.tensor(CIFAR_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD, device=dev).view(1, 3, 1, 1)
        cross_entropy = torch.nn.functional.cross_entropy

        def loss_of(xu8, y):  # as the dlx loader: /255, then Normalize; then model and loss
            x = (xu8.to(torch.float32) / 255.0 - mean) / std
            return cross_entropy(model(x), y)

        self.loss_of = loss_of
        self.total = torch.zeros((), device=dev)
        self.graphs: dict = {}
        self._mark = None
        if mode == "compile":
            import importlib

            cfg = importlib.import_module("torch._dynamo").config
            for name in (
                "recompile_limit",
                "cache_size_limit",
                "accumulated_recompile_limit",
                "accumulated_cache_size_limit",
            ):
                if hasattr(cfg, name):  # every contender and shape compiles the same code
                    setattr(cfg, name, max(getattr(cfg, name), 256))
            self.compiled = torch.compile(loss_of, mode="reduce-overhead", dynamic=False)
            self._mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)

    def batches(self, aug):
        return self.data.batches(self.batch, aug)

    def step(self, x, y):
        if self.mode == "cudagraph":
            return self._replay(x, y)
        if self._mark is not None:
            self._mark()
        loss = (self.compiled if self.mode == "compile" else self.loss_of)(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.total += loss.detach()
        return None

    def _capture(self, x, y):
        """Warm-up steps on a side stream, then the whole step captured (PyTorch's docs,
        "whole network capture"); one graph with its own static inputs per batch shape."""
        torch = self.torch
        sx, sy = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_STEPS):
                self.opt.zero_grad(set_to_none=True)
                self.loss_of(sx, sy).backward()
                self.opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients
        with torch.cuda.graph(graph):
            loss = self.loss_of(sx, sy)
            loss.backward()
            self.opt.step()
            self.total += loss.detach()
        return graph, sx, sy

    def _replay(self, x, y):
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, y)
        graph, sx, sy = self.graphs[key]
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        graph.replay()

    def sync(self):
        if self.data.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_loss(self):
        self.total.zero_()

    def loss_sum(self):
        return float(self.total)


# the GAN ----------------------------------------------------------------------------------


class DlxGAN:
    def __init__(self, dev, loader, graph: bool):
        import dlx
        from dlx import optim
        from dlx.models import DCGANDiscriminator, DCGANGenerator

        self.name = "dlx graph" if graph else "dlx eager"
        self.dev, self.loader, self.graph = dev, loader, graph
        dlx.manual_seed(0)
        self.g = DCGANGenerator(device=dev)
        self.d = DCGANDiscriminator(device=dev)
        self.g_opt = optim.Adam(self.g.parameters(), lr=GAN_LR, betas=GAN_BETAS)
        self.d_opt = optim.Adam(self.d.parameters(), lr=GAN_LR, betas=GAN_BETAS)

    def epoch(self) -> dict:
        """train_gan for 2 epochs; the second is timed between the callbacks (each called
        after its epoch's losses were read back: the device has finished)."""
        from dlx.training.gan import train_gan

        marks = []

        def callback(epoch, logs):
            marks.append((time.perf_counter(), dict(logs)))
            return False

        train_gan(
            self.g,
            self.d,
            self.loader,
            epochs=2,
            device=self.dev,
            callback=callback,
            progress=False,
            g_optimizer=self.g_opt,
            d_optimizer=self.d_opt,
            graph=self.graph,
        )
        dt = marks[1][0] - marks[0][0]
        logs = marks[1][1]
        images = len(self.loader) * GAN_BATCH
        return {
            "epoch_s": dt,
            "images": images,
            "steps": len(self.loader),
            "images_per_s": images / dt,
            "d_loss": logs["d_loss"],
            "g_loss": logs["g_loss"],
            "first_epoch_s_train_gan": marks[0][1].get("time_s"),
        }


def torch_dcgan(nn, latent: int = 100, c: int = 64):
    """dlx.models.DCGANGenerator / DCGANDiscriminator in torch.nn, with dcgan_init_."""
    g = nn.Sequential(
        nn.Linear(latent, 2 * c * 7 * 7, bias=False),
        nn.Unflatten(1, (2 * c, 7, 7)),
        nn.BatchNorm2d(2 * c),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        nn.Tanh(),
    )
    d = nn.Sequential(
        nn.Conv2d(1, c, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * c),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(2 * c * 7 * 7, 1),
    )
    for model in (g, d):
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
    return g, d


class TorchGAN:
    """dlx.training.gan.gan_step in PyTorch eager: D on real and on G(z) (detached), D's
    step; then G through the updated D (frozen), G's step; the four loss sums on the device."""

    name = "torch eager"

    def __init__(self, torch, data: TorchData, steps: int):
        self.torch, self.data, self.steps = torch, data, steps
        torch.manual_seed(0)
        self.g, self.d = (m.to(data.dev) for m in torch_dcgan(torch.nn))
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=GAN_LR, betas=GAN_BETAS)
        self.d_opt = torch.optim.Adam(self.d.parameters(), lr=GAN_LR, betas=GAN_BETAS)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.sums = torch.zeros(4, device=data.dev)

    def step(self, xu8):
        torch = self.torch
        real = (xu8.to(torch.float32) / 255.0 - 0.5) / 0.5  # Normalize((0.5,), (0.5,))
        z = torch.randn(real.shape[0], 100, device=self.data.dev)
        fake = self.g(z)
        self.d_opt.zero_grad(set_to_none=True)
        out_real = self.d(real)
        loss_real = self.bce(out_real, torch.ones_like(out_real))
        loss_real.backward()
        out_fake = self.d(fake.detach())
        loss_fake = self.bce(out_fake, torch.zeros_like(out_fake))
        loss_fake.backward()
        self.d_opt.step()
        self.d_opt.zero_grad(set_to_none=True)
        self.g_opt.zero_grad(set_to_none=True)
        self.d.requires_grad_(False)
        try:
            out = self.d(fake)
            g_loss = self.bce(out, torch.ones_like(out))
            g_loss.backward()
        finally:
            self.d.requires_grad_(True)
        self.g_opt.step()
        self.g_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.sums += torch.stack(
                [
                    loss_real + loss_fake,
                    g_loss,
                    torch.sigmoid(out_real).mean(),
                    torch.sigmoid(out_fake).mean(),
                ]
            )

    def sync(self):
        if self.data.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def warm(self):
        xb, _ = next(iter(self.data.batches(GAN_BATCH, False, drop_last=True)))
        for _ in range(WARM_STEPS):
            self.step(xb)
        self.sync()

    def epoch(self) -> dict:
        self.sums.zero_()
        self.sync()
        t0 = time.perf_counter()
        steps = 0
        for xb, _ in self.data.batches(GAN_BATCH, False, drop_last=True):
            self.step(xb)
            steps += 1
        self.sync()
        dt = time.perf_counter() - t0
        d_loss, g_loss = (float(v) / max(steps, 1) for v in self.sums[:2].tolist())
        return {
            "epoch_s": dt,
            "images": steps * GAN_BATCH,
            "steps": steps,
            "images_per_s": steps * GAN_BATCH / dt,
            "d_loss": d_loss,
            "g_loss": g_loss,
        }


# rounds and summaries ---------------------------------------------------------------------


def summarise(runs: list) -> dict:
    """The median over rounds of images/s (and the round with the median epoch time)."""
    ok = [r for r in runs if "images_per_s" in r]
    if not ok:
        return {"error": runs[-1].get("error", "no round ran") if runs else "not run"}
    ok.sort(key=lambda r: r["epoch_s"])
    out = dict(ok[len(ok) // 2])
    out["images_per_s"] = statistics.median(r["images_per_s"] for r in ok)
    out["epoch_s"] = statistics.median(r["epoch_s"] for r in ok)
    out["rounds_images_per_s"] = [round(r["images_per_s"], 1) for r in runs if "images_per_s" in r]
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        out["round_errors"] = errors
    return out


def add_ratios(table: dict, base: str = "torch eager") -> None:
    ref = table.get(base, {}).get("images_per_s")
    for r in table.values():
        if ref and "images_per_s" in r:
            r["ratio_to_torch_eager"] = r["images_per_s"] / ref


def timed_rounds(contenders: dict, settings: list, rounds: int, run_one) -> dict:
    """{setting: {name: [per-round results]}}; contenders interleaved, order rotated per
    round; a contender that fails is recorded and left out of later rounds."""
    runs = {s: {name: [] for name in contenders} for s in settings}
    dead: set = set()
    names = list(contenders)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for s in settings:
            for name in order:
                if name in dead:
                    continue
                try:
                    runs[s][name].append(run_one(contenders[name], s))
                except Exception as e:  # noqa: BLE001 - record, go on with the others
                    runs[s][name].append({"error": _fail(f"{name} {s} round {r + 1}", e)})
                    dead.add(name)
        _say(f"  round {r + 1}/{rounds} done")
    return runs


def build(name: str, make, setup: dict):
    """``make()`` timed into ``setup[name]``; None (and the error recorded) if it fails."""
    t0 = time.perf_counter()
    try:
        c = make()
    except Exception as e:  # noqa: BLE001
        setup[name] = {"error": _fail(f"{name} setup", e)}
        return None
    setup[name] = {"setup_s": time.perf_counter() - t0}
    return c


# section 1: LeNet-5 -----------------------------------------------------------------------


def lenet_section(args, dev, torch, tdev, result) -> dict:
    """Times the LeNet-5 epochs; returns the contenders of the profiled batch size."""
    from dlx.data import ArrayDataset, DataLoader
    from dlx.data import transforms as T

    x, y, source = cifar_data(args.data_dir, args.images)
    n = len(x)
    result["lenet"] = out = {"data": source, "images": n, "batches": {}}
    _say(f"LeNet-5: {source}")
    norm = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    transforms = {
        False: T.Compose([norm]),
        True: T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), norm]),
    }
    tdata = None
    if torch is not None:
        try:
            tdata = TorchData(torch, tdev, x, y)
        except Exception as e:  # noqa: BLE001
            _fail("torch data to device", e)
    on_cuda = dev.type == "cuda"
    keep = args.batches[0] if 128 not in args.batches else 128
    kept = {}
    for batch in args.batches:
        tail = n % batch
        setup: dict = {}
        contenders = {}
        _say(f"batch {batch}: building and warming up the contenders")
        try:
            ds = ArrayDataset(x, y)
            loaders = {
                aug: DataLoader(
                    ds, batch_size=batch, shuffle=True, seed=0, device=dev, transform=transforms[aug]
                )
                for aug in (False, True)
            }
        except Exception as e:  # noqa: BLE001
            _fail(f"dlx loaders batch {batch}", e)
            loaders = None
        makers = {}
        if loaders is not None:
            for graph in (False, True):
                makers["dlx graph" if graph else "dlx eager"] = lambda graph=graph, loaders=loaders: DlxLeNet(
                    dev, loaders, graph
                )
        modes = (
            ["eager"]
            + (["compile"] if on_cuda and not args.no_compile else [])
            + (["cudagraph"] if on_cuda else [])
        )
        for mode in modes if tdata is not None else []:
            makers[f"torch {mode}"] = lambda mode=mode, batch=batch: TorchLeNet(torch, tdata, batch, mode)
        for name, make in makers.items():

            def make_warm(make=make, tail=tail):
                c = make()
                for aug in (False, True):
                    c.warm(aug, tail)
                return c

            c = build(name, make_warm, setup)
            if c is not None:
                contenders[name] = c
            _say(f"  {name}: {setup[name]}")
        if not on_cuda:
            for name in ("torch compile", "torch cudagraph"):
                setup[name] = {"skipped": "cuda only"}
        elif args.no_compile:
            setup["torch compile"] = {"skipped": "--no-compile"}
        settings = ["plain", "augmented"]
        runs = timed_rounds(contenders, settings, args.rounds, lambda c, s: c.epoch(s == "augmented"))
        entry = out["batches"][str(batch)] = {
            "steps_per_epoch": -(-n // batch),
            "last_batch": tail or batch,
            "setup": setup,
        }
        for s in settings:
            table = {name: summarise(rs) for name, rs in runs[s].items()}
            add_ratios(table)
            entry[s] = table
        if batch == keep:
            kept = contenders
        else:
            del contenders
        gc.collect()
    result["lenet_profile_batch"] = keep
    return kept


# section 2: DCGAN --------------------------------------------------------------------------


def gan_section(args, dev, torch, tdev, result) -> None:
    from dlx.data import ArrayDataset, DataLoader
    from dlx.data.transforms import Normalize

    x, y, source = mnist_data(args.data_dir, args.gan_steps * GAN_BATCH)
    steps = len(x) // GAN_BATCH
    result["gan"] = out = {"data": source, "batch": GAN_BATCH, "steps_per_epoch": steps}
    _say(f"DCGAN: {source}, {steps} steps per epoch")
    if steps < 1:
        raise ValueError(f"DCGAN: {len(x)} images make no batch of {GAN_BATCH}")
    x, y = x[: steps * GAN_BATCH], y[: steps * GAN_BATCH]
    setup: dict = {}
    contenders = {}
    loader = DataLoader(
        ArrayDataset(x, y),
        batch_size=GAN_BATCH,
        shuffle=True,
        drop_last=True,
        seed=0,
        device=dev,
        transform=Normalize((0.5,), (0.5,)),
    )
    for graph in (False, True):
        c = build("dlx graph" if graph else "dlx eager", lambda g=graph: DlxGAN(dev, loader, g), setup)
        if c is not None:
            contenders[c.name] = c
    if torch is not None:

        def make_torch():
            c = TorchGAN(torch, TorchData(torch, tdev, x, y), steps)
            c.warm()
            return c

        c = build("torch eager", make_torch, setup)
        if c is not None:
            contenders[c.name] = c
    out["setup"] = setup
    runs = timed_rounds(contenders, ["epoch"], args.rounds, lambda c, s: c.epoch())
    table = {name: summarise(rs) for name, rs in runs["epoch"].items()}
    add_ratios(table)
    out["results"] = table


# section 3: GPU busy fraction --------------------------------------------------------------


def _merged_us(intervals) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _kind(e, on_cuda: bool) -> str:
    """'kernel', 'memory' (copies and memsets), or 'other' for a profiler event."""
    dt = getattr(e.device_type, "name", str(e.device_type)).split(".")[-1]
    if not on_cuda:  # cpu: the aten ops stand in for kernels (a check of the code path)
        return "kernel" if dt == "CPU" and e.name.startswith("aten::") else "other"
    if dt != "CUDA":
        return "other"
    activity = getattr(e, "activity_type", None)
    if activity:
        activity = str(activity).lower()
        if activity.endswith("kernel"):
            return "kernel"
        return "memory" if "memcpy" in activity or "memset" in activity else "other"
    if getattr(e, "is_user_annotation", False):
        return "other"
    return "memory" if e.name.startswith(("Memcpy", "Memset")) else "kernel"


def busy_fraction(contender, steps: int, on_cuda: bool, torch) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        contender.sync()
        t0 = time.perf_counter()
        contender.run_steps(False, steps)
        contender.sync()
        wall_us = 1e6 * (time.perf_counter() - t0)
    kernels, memory = [], []
    for e in prof.events():
        kind = _kind(e, on_cuda)
        if kind == "other":
            continue
        (kernels if kind == "kernel" else memory).append((e.time_range.start, e.time_range.end))
    if on_cuda and not kernels:
        raise RuntimeError("the profiler recorded no CUDA kernel (CUPTI unavailable?)")
    busy_us = _merged_us(kernels)
    return {
        "steps": steps,
        "events": "CUDA kernels" if on_cuda else "aten ops on the CPU (code-path check, no GPU)",
        "kernels_per_step": len(kernels) / steps,
        "kernel_ms_per_step": 1e-3 * busy_us / steps,
        "kernel_sum_ms_per_step": 1e-3 * sum(b - a for a, b in kernels) / steps,
        "memcpy_memset_ms_per_step": 1e-3 * _merged_us(memory) / steps,
        "wall_ms_per_step_profiled": 1e-3 * wall_us / steps,
        "busy_fraction": busy_us / wall_us,
    }


def busy_section(args, contenders: dict, on_cuda: bool, torch, result) -> None:
    out = result["busy"] = {}
    batch = result.get("lenet_profile_batch")
    plain = result.get("lenet", {}).get("batches", {}).get(str(batch), {}).get("plain", {})
    for name, c in contenders.items():
        try:
            r = busy_fraction(c, args.profile_steps, on_cuda, torch)
        except Exception as e:  # noqa: BLE001 - the profiler may be unusable here
            out[name] = {"error": _fail(f"profiler {name}", e)}
            continue
        ref = plain.get(name, {})
        if ref.get("epoch_s") and ref.get("steps"):
            r["wall_ms_per_step_unprofiled"] = 1e3 * ref["epoch_s"] / ref["steps"]
            r["busy_vs_unprofiled"] = r["kernel_ms_per_step"] / r["wall_ms_per_step_unprofiled"]
        out[name] = r
        _say(f"  {name}: busy {r['busy_fraction']:.2f}, {r['kernels_per_step']:.1f} kernels/step")


# report -------------------------------------------------------------------------------------


def _f(v, fmt):
    if isinstance(v, (int, float)):
        return format(v, fmt)
    width = fmt.split(".")[0].replace(",", "")
    return "-".rjust(int(width) if width.isdigit() else 0)


def print_table(result: dict) -> None:
    dev = result["device"]
    print(
        f"\ngraph_epoch: {dev} ({result.get('gpu') or result['machine']}), medians of "
        f"{result['rounds']} rounds, {result['total_s']:.0f} s in all"
    )
    lenet = result.get("lenet")
    if lenet:
        print(f"\nLeNet-5, Adam lr {LR}, {lenet['data']}; images/s per epoch")
        print(
            f"{'batch':>5} {'augment':>9} {'contender':16} {'images/s':>10} {'epoch s':>8} "
            f"{'x torch eager':>13} {'mean loss':>9} {'setup s':>8}"
        )
        for batch, entry in lenet["batches"].items():
            for s in ("plain", "augmented"):
                for name, r in entry.get(s, {}).items():
                    setup = entry["setup"].get(name, {})
                    if "error" in r:
                        print(f"{batch:>5} {s:>9} {name:16} failed: {r['error'][:70]}")
                        continue
                    print(
                        f"{batch:>5} {s:>9} {name:16} {_f(r['images_per_s'], '10,.0f')} "
                        f"{_f(r['epoch_s'], '8.3f')} {_f(r.get('ratio_to_torch_eager'), '13.2f')} "
                        f"{_f(r.get('mean_loss'), '9.4f')} {_f(setup.get('setup_s'), '8.1f')}"
                    )
            for name, st in entry["setup"].items():
                if "skipped" in st or "error" in st:
                    print(
                        f"{batch:>5} {'':>9} {name:16} not run: {(st.get('skipped') or st.get('error'))[:80]}"
                    )
    gan = result.get("gan")
    if gan and "results" in gan:
        print(f"\nDCGAN, batch {gan['batch']}, {gan['steps_per_epoch']} steps per epoch, {gan['data']}")
        print(
            f"{'contender':16} {'images/s':>10} {'epoch s':>8} {'x torch eager':>13} {'d_loss':>7} "
            f"{'g_loss':>7}"
        )
        for name, r in gan["results"].items():
            if "error" in r:
                print(f"{name:16} failed: {r['error'][:80]}")
                continue
            print(
                f"{name:16} {_f(r['images_per_s'], '10,.0f')} {_f(r['epoch_s'], '8.3f')} "
                f"{_f(r.get('ratio_to_torch_eager'), '13.2f')} {_f(r.get('d_loss'), '7.3f')} "
                f"{_f(r.get('g_loss'), '7.3f')}"
            )
    busy = result.get("busy")
    if busy:
        print(
            f"\nGPU busy per step (profiler; LeNet-5 batch {result.get('lenet_profile_batch')}, "
            f"plain, loader included)"
        )
        print(
            f"{'contender':16} {'kernels':>8} {'kernel ms':>9} {'wall ms':>8} {'busy':>6} "
            f"{'wall ms unprof.':>15} {'busy unprof.':>12}"
        )
        for name, r in busy.items():
            if "error" in r:
                print(f"{name:16} failed: {r['error'][:80]}")
                continue
            print(
                f"{name:16} {_f(r['kernels_per_step'], '8.1f')} {_f(r['kernel_ms_per_step'], '9.3f')} "
                f"{_f(r['wall_ms_per_step_profiled'], '8.3f')} {_f(r['busy_fraction'], '6.2f')} "
                f"{_f(r.get('wall_ms_per_step_unprofiled'), '15.3f')} "
                f"{_f(r.get('busy_vs_unprofiled'), '12.2f')}"
            )
        if result["device"] == "cpu":
            print("(cpu: 'kernels' are aten ops on the CPU; the figures check the code path only)")
    if result["failures"]:
        print(f"\n{len(result['failures'])} failure(s):")
        for f in result["failures"]:
            print(f"  {f['where']}: {f['error'][:200]}")


def versions(dev, torch) -> dict:
    import dlx

    out = {"dlx": dlx.__version__, "numpy": np.__version__, "python": platform.python_version()}
    if torch is not None:
        out["torch"] = torch.__version__
        if dev.type == "cuda":
            out["torch_cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
            out["torch_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
            out["torch_cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    if dev.type == "cuda":
        try:
            import cupy

            out["cupy"] = cupy.__version__
            out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as e:  # noqa: BLE001
            out["cupy"] = _error(e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (dlx and PyTorch)")
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("DLX_DATA_DIR"),
        help="folder with cifar10/ and mnist/ (default: DLX_DATA_DIR; else random images)",
    )
    ap.add_argument("--images", type=int, default=None, help="LeNet-5 epoch size (default 50000)")
    ap.add_argument("--batches", default="128,512", help="LeNet-5 batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--gan-steps", type=int, default=None, help="DCGAN steps per epoch (default 200; 0 skips the GAN)"
    )
    ap.add_argument(
        "--profile-steps", type=int, default=None, help="steps under the profiler (default 50; 0 skips it)"
    )
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1000 images, 2 rounds, 3 GAN steps, 5 profiled steps"
    )
    ap.add_argument("--out", help="write the results to this JSON file")
    args = ap.parse_args()
    quick = {"images": 1000, "rounds": 2, "gan_steps": 3, "profile_steps": 5}
    full = {"images": 50000, "rounds": 3, "gan_steps": 200, "profile_steps": 50}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.images < 1 or args.rounds < 1 or not args.batches or min(args.batches) < 1:
        ap.error("--images, --rounds and --batches must be positive")

    t_start = time.perf_counter()
    import dlx

    dev = dlx.device(args.device)
    on_cuda = dev.type == "cuda"
    result = {
        "device": str(dev),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rounds": args.rounds,
        "args": {k: v for k, v in vars(args).items()},
        "failures": FAILURES,
    }
    try:
        import torch

        tdev = torch.device(str(dev) if on_cuda else "cpu")
        if on_cuda:
            result["gpu"] = torch.cuda.get_device_name(tdev)
    except Exception as e:  # noqa: BLE001 - dlx alone, no ratios
        torch = tdev = None
        _fail("import torch", e)
    result["versions"] = versions(dev, torch)

    kept = {}
    try:
        kept = lenet_section(args, dev, torch, tdev, result)
    except Exception as e:  # noqa: BLE001
        _fail("LeNet-5 section", e)
    write_json(args.out, result, t_start)
    if args.profile_steps > 0 and torch is not None and kept:
        _say(f"profiler: {args.profile_steps} steps per contender")
        try:
            busy_section(args, kept, on_cuda, torch, result)
        except Exception as e:  # noqa: BLE001
            _fail("profiler section", e)
        write_json(args.out, result, t_start)
    kept = None
    gc.collect()
    if on_cuda and torch is not None:
        torch.cuda.empty_cache()
    if args.gan_steps > 0:
        try:
            gan_section(args, dev, torch, tdev, result)
        except Exception as e:  # noqa: BLE001
            _fail("DCGAN section", e)
    write_json(args.out, result, t_start)
    print_table(result)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def write_json(path, result: dict, t_start: float) -> None:
    """The results so far (after every section: a run cut short keeps what it measured)."""
    result["total_s"] = time.perf_counter() - t_start
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
