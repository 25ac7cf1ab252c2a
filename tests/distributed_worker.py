"""Runs under ``mpiexec -n N`` (or alone, as the one-process reference) for
tests/test_distributed.py: ``python tests/distributed_worker.py MODE OUT.npz [ARGS]``.

Modes
  lenet B    LeNet-5, SGD, 30 steps over a seeded synthetic set, batch B per rank (sharded)
  lenet_adam B   the same with Adam
  dcgan B    DCGAN (SyncBatchNorm), SGD, 30 GAN steps, batch B per rank; the noise of each
             global batch is drawn whole and sliced, so every world sees the same numbers
  syncbn     SyncBatchNorm on rank r's half of a batch: outputs, dx and the summed dweight/dbias
  fail R     rank R raises at its third step (the others must stop, not hang)
  kill R     rank R kills itself with SIGKILL at its third step
  fitfail R  dlx.fit with a Checkpoint to OUT for 4 epochs; rank R raises after epoch 2
Rank 0 writes OUT.npz (the final weights and what the test compares).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import dlx
from dlx import distributed as dist
from dlx import nn, optim
from dlx.data import DataLoader
from dlx.data.datasets import ArrayDataset

STEPS = 30


def _images(n, c, h, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c, h, h)).astype(np.float32), rng.integers(0, 10, n)


def lenet(batch: int, out: str, adam: bool = False) -> None:
    from dlx.models import LeNet5

    world = dist.init()
    dlx.manual_seed(0)
    model = LeNet5()
    dist.broadcast_parameters(model)
    opt = (optim.Adam(model.parameters(), lr=1e-3) if adam
           else optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    loss_fn = nn.CrossEntropyLoss()
    x, y = _images(96, 3, 32, 1)
    loader = DataLoader(ArrayDataset(x, y), batch, shuffle=True, seed=5, drop_last=True,
                        shard=(world.rank, world.size))
    losses, step, epoch = [], 0, 0
    while step < STEPS:
        loader.set_epoch(epoch)
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            model.backward_params(loss_fn.backward())
            dist.allreduce_gradients(model)
            opt.step()
            opt.zero_grad()
            losses.append(float(dist.all_reduce(loss, "mean")))
            step += 1
            if step == STEPS:
                break
        epoch += 1
    _write(out, model, losses=np.array(losses))


def dcgan(batch: int, out: str) -> None:
    from dlx.models import DCGANDiscriminator, DCGANGenerator
    from dlx.training import gan_step

    world = dist.init()
    dlx.manual_seed(0)
    g = nn.SyncBatchNorm.convert_sync_batchnorm(DCGANGenerator(latent_dim=8, channels=8))
    d = nn.SyncBatchNorm.convert_sync_batchnorm(DCGANDiscriminator(channels=8))
    dist.broadcast_parameters(g)
    dist.broadcast_parameters(d)
    g_opt = optim.SGD(g.parameters(), lr=0.01)
    d_opt = optim.SGD(d.parameters(), lr=0.01)
    x = np.tanh(np.random.default_rng(2).standard_normal((64, 1, 28, 28))).astype(np.float32)
    loader = DataLoader(ArrayDataset(x, np.zeros(64, dtype=np.int64)), batch, shuffle=True,
                        seed=6, drop_last=True, shard=(world.rank, world.size))
    noise = dlx.device("cpu").generator([7])
    step, epoch, losses = 0, 0, []
    while step < STEPS:
        loader.set_epoch(epoch)
        for xb, _ in loader:
            z_all = noise.normal((batch * world.size, 8))  # the global batch's noise, sliced
            z = z_all[world.rank * batch:(world.rank + 1) * batch]
            logs = gan_step(g, d, xb, z, g_opt, d_opt)
            losses.append([float(dist.all_reduce(logs[k], "mean")) for k in ("d_loss", "g_loss")])
            step += 1
            if step == STEPS:
                break
        epoch += 1
    _write(out, g, prefix="g.", losses=np.array(losses), extra=d)


def syncbn(out: str) -> None:
    world = dist.init()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3, 4, 5)).astype(np.float32) * 2 + 1
    dy = rng.standard_normal(x.shape).astype(np.float32)
    m = nn.SyncBatchNorm(3)
    m.weight.data = np.array([0.5, 1.5, -1.0], dtype=np.float32)
    part = slice(world.rank * 8 // world.size, (world.rank + 1) * 8 // world.size)
    y = m(x[part])
    dx = m.backward(dy[part])
    grads = {n: dist.all_reduce(p.grad) for n, p in m.named_parameters()}  # summed over ranks
    ys = world.comm.gather(y, root=0) if world.size > 1 else [y]
    dxs = world.comm.gather(dx, root=0) if world.size > 1 else [dx]
    if world.rank == 0:
        np.savez(out, y=np.concatenate(ys), dx=np.concatenate(dxs), running_mean=m.running_mean,
                 running_var=m.running_var, **{f"grad_{k}": v for k, v in grads.items()})


def fail(rank: int, out: str, die: bool) -> None:
    world = dist.init()
    buf = np.ones(4, dtype=np.float32)
    for step in range(10):
        if world.rank == rank and step == 3:
            if die:
                os.kill(os.getpid(), 9)
            raise RuntimeError(f"rank {rank} fails on purpose at step {step}")
        dist.all_reduce(buf)


def fit_then_fail(rank: int, out: str) -> None:
    from dlx.models import MLP

    world = dist.init()
    dlx.manual_seed(0)
    model = MLP([12, 16, 10])
    dist.broadcast_parameters(model)
    x, y = _images(64, 3, 2, 4)
    loader = DataLoader(ArrayDataset(x, y), 8, shuffle=True, seed=1,
                        shard=(world.rank, world.size))

    class FailOnRank(dlx.Callback):
        def on_epoch_end(self, epoch, logs, state):
            if world.rank == rank and epoch == 1:
                raise RuntimeError(f"rank {rank} fails on purpose after epoch {epoch + 1}")

    dlx.fit(nn.Sequential(nn.Flatten(), model), nn.CrossEntropyLoss(),
            optim.SGD(model.parameters(), lr=0.1), loader, epochs=4, progress=False,
            callbacks=[dlx.Checkpoint(out), FailOnRank()])


def _write(out, model, prefix="", losses=None, extra=None) -> None:
    if not dist.is_main():
        return
    arrays = {prefix + k: dlx.to_numpy(v) for k, v in model.state_dict().items()}
    if extra is not None:
        arrays.update({"d." + k: dlx.to_numpy(v) for k, v in extra.state_dict().items()})
    np.savez(out, losses=losses, **arrays)


if __name__ == "__main__":
    mode, out, *rest = sys.argv[1:]
    if mode in ("lenet", "lenet_adam"):
        lenet(int(rest[0]), out, adam=mode == "lenet_adam")
    elif mode == "dcgan":
        dcgan(int(rest[0]), out)
    elif mode == "syncbn":
        syncbn(out)
    elif mode == "fitfail":
        fit_then_fail(int(rest[0]), out)
    elif mode in ("fail", "kill"):
        fail(int(rest[0]), out, die=mode == "kill")
    else:
        raise SystemExit(f"unknown mode {mode}")
