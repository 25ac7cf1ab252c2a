"""Training a GAN with explicit backward: ``gan_step`` (the non-saturating loss of
Goodfellow et al., 2014), ``train_gan`` (epochs, progress bar, callback), a weight-averaged
generator (``ema_update_``, ``copy_buffers_``) and ``sample``.

The models are in ``dlx.models`` (``DCGANGenerator``, ...); the ``dlx gan`` command that
writes sample grids, scores and checkpoints is ``dlx.cli.gan``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dlx import distributed, nn
from dlx._device import device as _device
from dlx._device import get_namespace, to_numpy
from dlx._grad_mode import no_grad
from dlx.compile import compile_step
from dlx.nn import functional as F
from dlx.training._first_step import first_step_compiled, say_compile_note

__all__ = ["copy_buffers_", "ema_update_", "gan_step", "sample", "train_gan"]


def gan_step(generator, discriminator, real, z, g_optimizer, d_optimizer, loss_fn=None,
             labels=None, loss: str = "bce", update_generator: bool = True, codes=None,
             info_weight: float = 1.0):
    """One GAN step with explicit backward: the non-saturating loss (Goodfellow et al.,
    2014; ``loss="bce"``) or the hinge loss (``loss="hinge"``, ``nn.HingeGANLoss``).

    D step: loss(D(real), real) + loss(D(G(z)), fake), gradients into D only (the fake images
    are plain arrays, nothing flows back to G), then ``d_optimizer.step()``.
    G step: the generator's loss on D'(G(z)) through the updated D, frozen
    (``requires_grad_(False)``: its backward returns dL/dfake and leaves D's ``.grad`` alone),
    then ``generator.backward`` and ``g_optimizer.step()``. With ``labels`` (N,) the models
    are class-conditional: G(z, labels), D(x, labels), the fake batch drawn for the real
    batch's labels. Returns 0-d device arrays (no host sync): ``{"d_loss", "g_loss",
    "d_real", "d_fake"}`` with d_real/d_fake the mean sigmoid of D's scores on real and fake
    images during the D step. ``update_generator=False``: the D step only (the generator
    runs without keeping anything for backward), and no "g_loss".

    InfoGAN (``dlx.models.InfoDCGANGenerator`` / ``InfoDCGANDiscriminator``): with ``codes``
    (N,) (drawn uniformly, no labels) the generator draws G(z, codes) and the discriminator's
    output (N, 1 + K) is the score, then Q's code logits; ``info_weight`` times the
    cross-entropy of Q(G(z, codes)) against the codes joins the discriminator's loss on the
    fake batch and the generator's loss (Q learns nothing from real images), and
    ``"info_loss"`` (the D step's cross-entropy) joins the figures.
    """
    if loss not in ("bce", "hinge"):
        raise ValueError(f"gan_step: loss must be 'bce' or 'hinge', got {loss!r}")
    if loss == "hinge":
        d_loss_fn, g_loss_fn = nn.HingeGANLoss(), nn.HingeGANLoss(role="generator")
    else:
        d_loss_fn = g_loss_fn = loss_fn or nn.BCEWithLogitsLoss()
    if codes is not None and labels is not None:
        raise ValueError("gan_step: give labels (class-conditional) or codes (InfoGAN), not both")
    cond = () if labels is None else (labels,)
    xp = get_namespace(real)
    info = codes is not None
    info_fn = nn.CrossEntropyLoss() if info else None

    def score(out):  # the real/fake column of an InfoGAN discriminator's output
        return out[:, :1] if info else out

    def d_output_grad(dscore, out, with_info):  # dL/d(out): InfoGAN's Q logits get the code loss
        if not info:
            return dscore
        if not with_info:  # real images: Q learns nothing from them
            return xp.concat([dscore, xp.zeros_like(out[:, 1:])], axis=1)
        return xp.concat([dscore, info_fn.backward() * info_weight], axis=1)

    g_inputs = (z, *cond) if not info else (z, codes)
    if update_generator:
        fake = generator(*g_inputs)  # keeps what generator.backward needs in the G step below
    else:
        with no_grad():
            fake = generator(*g_inputs)

    d_optimizer.zero_grad()
    out_real = discriminator(real, *cond)
    loss_real = d_loss_fn(score(out_real), xp.ones_like(score(out_real)))
    discriminator.backward_params(d_output_grad(d_loss_fn.backward(), out_real, False))
    out_fake = discriminator(fake, *cond)
    loss_fake = d_loss_fn(score(out_fake), xp.zeros_like(score(out_fake)))
    dscore = d_loss_fn.backward()
    info_loss = info_fn(out_fake[:, 1:], codes) if info else None
    discriminator.backward_params(d_output_grad(dscore, out_fake, True))
    distributed.allreduce_gradients(discriminator)  # data parallel: the ranks' mean (else nothing)
    d_optimizer.step()
    d_optimizer.zero_grad()
    d_figures = {"d_loss": loss_real + loss_fake, "d_real": xp.mean(F.sigmoid(score(out_real))),
                 "d_fake": xp.mean(F.sigmoid(score(out_fake)))}
    if info:
        d_figures["info_loss"] = info_loss
    if not update_generator:
        return d_figures

    g_optimizer.zero_grad()
    discriminator.requires_grad_(False)
    try:
        out = discriminator(fake, *cond)
        g_loss = g_loss_fn(score(out), xp.ones_like(score(out)))  # non-saturating: maximise log D(G(z))
        dscore = g_loss_fn.backward()
        if info:
            info_fn(out[:, 1:], codes)
        dfake = discriminator.backward(d_output_grad(dscore, out, True))
    finally:
        discriminator.requires_grad_(True)
    generator.backward_params(dfake)
    distributed.allreduce_gradients(generator)
    g_optimizer.step()
    g_optimizer.zero_grad()
    return {**d_figures, "g_loss": g_loss}


def ema_update_(average, model, decay: float) -> None:
    """Exponential moving average of weights, in place: every parameter of ``average``
    becomes ``decay * average + (1 - decay) * model`` (the models have the same layout).
    Sampling from the average of the last few thousand generator steps, rather than from
    the last step alone, smooths out the oscillation of GAN training (Yazıcı et al., 2019)."""
    for avg, p in zip(average.parameters(), model.parameters()):
        avg.data *= decay
        avg.data += (1.0 - decay) * p.data


def copy_buffers_(dst, src) -> None:
    """Copy the buffers (BatchNorm's running statistics) of ``src`` into ``dst``."""
    names = {name for name, _ in src.named_buffers()}
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in names}, strict=False)


def train_gan(generator, discriminator, loader, epochs: int, lr: float = 2e-4,
              betas=(0.5, 0.999), latent_dim: int | None = None, device=None, callback=None,
              progress: bool = True, g_optimizer=None, d_optimizer=None, ema_generator=None,
              ema_decay: float = 0.999, loss: str = "bce", ema_warmup: bool = False,
              graph: bool = False, d_steps: int = 1, info_weight: float = 1.0) -> dict:
    """Train a GAN for ``epochs`` epochs over ``loader`` (batches ``(x, y)`` or ``x``, images
    in the generator's output range, [-1, 1]) with Adam(lr, betas) for both networks
    (or the optimizers given). Noise z ~ N(0, 1) of size ``latent_dim`` (default
    ``generator.latent_dim``) is drawn from the device's dlx generator (``dlx.manual_seed``).
    ``loss``: "bce" (non-saturating) or "hinge" (see ``gan_step``). A class-conditional
    generator (one with ``num_classes``) is given the batch's labels, and so is the
    discriminator. InfoGAN (a discriminator with ``num_codes``, ``InfoDCGANDiscriminator``):
    every step draws the codes uniformly beside the noise from the same generator, labels are
    ignored, and the code loss (weight ``info_weight``) is trained and logged as "info_loss".

    ``callback(epoch, logs)`` (epoch 1-based) runs after each epoch and may add entries to
    ``logs`` (sample grids, scores); returning True stops training. Returns the history:
    a dict of per-epoch lists ``epoch, d_loss, g_loss, d_real, d_fake, time_s, images_per_s``.
    With ``ema_generator`` (a copy of the generator), its weights follow the generator's as
    an exponential moving average (``ema_update_`` with ``ema_decay`` after every step;
    with ``ema_warmup`` the decay of step t is min(ema_decay, (1 + t) / (10 + t)), so the
    average follows the generator closely at first instead of lagging behind its start), and
    its buffers are the generator's at the end of every epoch.
    A first step that compiles the kernels (a fresh install) is said, once, and left out of
    its epoch's ``time_s`` and ``images_per_s``, as in ``dlx.fit``.
    A NaN or infinite mean loss raises FloatingPointError at the end of its epoch (losses
    are summed on the device and read back every 50 steps, not synchronised every step),
    before the callback, so no checkpoint of the broken weights is written.

    Under ``mpiexec -n N`` (``dlx.distributed``, with a loader made with ``shard=(rank,
    world)``) every rank draws its own noise, ``gan_step`` averages the gradients, the
    epoch's figures are averaged over the ranks and only rank 0 shows progress; the callback
    runs on every rank (so schedulers step everywhere): write files there on rank 0 only.

    ``d_steps``: the generator is updated after every ``d_steps``-th discriminator update
    (each on a batch of its own; the losses are averaged over the steps that made them).

    ``graph=True``: on cuda, each step (noise, both networks' updates, the loss sums) is
    replayed as one captured CUDA graph (``dlx.compile_step``; the weight average runs after
    it, its decay changing per step); eagerly elsewhere and under ``mpiexec``.
    """
    from tqdm.auto import tqdm

    from dlx import optim
    from dlx._random import generator as rng_of

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train_gan: epochs must be a positive int, got {epochs!r}")
    if not isinstance(d_steps, int) or isinstance(d_steps, bool) or d_steps < 1:
        raise ValueError(f"train_gan: d_steps must be a positive int, got {d_steps!r}")
    if d_steps > len(loader):
        raise ValueError(f"train_gan: d_steps={d_steps} but an epoch has {len(loader)} batches: the "
                         f"generator would never be updated; use d_steps <= {len(loader)}")
    dev = _device(device) if device is not None else (generator.device or _device())
    latent_dim = latent_dim or getattr(generator, "latent_dim", None)
    if not latent_dim:
        raise ValueError("train_gan: give latent_dim (the generator has no .latent_dim)")
    g_optimizer = g_optimizer or optim.Adam(generator.parameters(), lr=lr, betas=betas)
    d_optimizer = d_optimizer or optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = generator.dtype or "float32"
    num_codes = getattr(discriminator, "num_codes", None)
    if num_codes is not None and getattr(generator, "num_codes", None) != num_codes:
        raise ValueError(f"train_gan: the discriminator reads {num_codes} InfoGAN codes but the "
                         f"generator takes {getattr(generator, 'num_codes', None)}; build both with "
                         f"the same num_codes")
    conditional = num_codes is None and getattr(generator, "num_classes", None) is not None
    progress = progress and distributed.is_main()
    history: dict = {}
    ema_steps = 0
    sums: dict = {}  # the epoch's loss sums, device scalars added to in place by every step

    def train_step(real, *labels, update_generator=True):
        z = rng_of(dev).normal((int(real.shape[0]), latent_dim), dtype=dtype)
        codes = None if num_codes is None else rng_of(dev).integers(0, num_codes, (int(real.shape[0]),))
        out = gan_step(generator, discriminator, real, z, g_optimizer, d_optimizer, loss_fn,
                       labels=labels[0] if labels else None, loss=loss,
                       update_generator=update_generator, codes=codes, info_weight=info_weight)
        for k, v in out.items():
            if k not in sums:  # the first (eager) step makes them
                sums[k] = dev.xp.zeros_like(v)
            sums[k] += v

    def d_only_step(real, *labels):
        train_step(real, *labels, update_generator=False)

    captured = graph and distributed.world_size() == 1
    step_fn = compile_step(train_step, graph=captured)  # D and G
    d_step_fn = compile_step(d_only_step, graph=captured)  # D alone (d_steps > 1)
    counts: dict = {}  # steps that added to each sum this epoch (host counts)
    d_keys = ("d_loss", "d_real", "d_fake") + (("info_loss",) if num_codes is not None else ())
    say_compile_note(dev, progress)
    for epoch in range(1, epochs + 1):
        generator.train()
        discriminator.train()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        t0, seen, steps, untimed = time.perf_counter(), 0, 0, 0
        for v in sums.values():
            v[...] = 0
        counts.clear()
        for batch in loader:
            real = batch[0] if isinstance(batch, (tuple, list)) else batch
            labels = (batch[1],) if conditional else ()
            n = int(real.shape[0])
            g_update = (steps + 1) % d_steps == 0
            (step_fn if g_update else d_step_fn)(real, *labels)
            if epoch == 1 and steps == 0 and first_step_compiled(t0, bar, progress):
                t0, untimed = time.perf_counter(), n  # out of the epoch's time and speed
            for k in d_keys + (("g_loss",) if g_update else ()):
                counts[k] = counts.get(k, 0) + 1
            if ema_generator is not None and g_update:
                decay = min(ema_decay, (1 + ema_steps) / (10 + ema_steps)) if ema_warmup else ema_decay
                ema_update_(ema_generator, generator, decay)
                ema_steps += 1
            # summed on the device; read back every 50 steps for the bar, not every step
            seen, steps = seen + n, steps + 1
            if progress and (steps % 50 == 0 or steps == len(loader)):
                bar.set_postfix({k: f"{float(to_numpy(v)) / counts.get(k, 1):.3f}"
                                 for k, v in sums.items()}, refresh=False)
            bar.update(1)
        bar.close()
        if steps == 0:
            raise ValueError("train_gan: the loader produced no batches")
        elapsed = time.perf_counter() - t0
        means = sums
        if distributed.world_size() > 1:  # every rank ran as many steps: mean of the means
            means = {k: distributed.all_reduce(v, "mean") for k, v in sums.items()}
            seen, untimed = (int(v) for v in to_numpy(distributed.all_reduce(np.asarray([seen, untimed]))))
        logs = {"epoch": epoch, **{k: float(to_numpy(v)) / max(counts.get(k, 0), 1)
                                   for k, v in means.items()},
                "time_s": elapsed, "images_per_s": (seen - untimed) / elapsed}
        if not (math.isfinite(logs["d_loss"]) and math.isfinite(logs["g_loss"])):
            raise FloatingPointError(f"train_gan: the loss became non-finite in epoch {epoch} "
                                     f"(d_loss {logs['d_loss']}, g_loss {logs['g_loss']}); "
                                     f"try a lower learning rate")
        if ema_generator is not None:
            copy_buffers_(ema_generator, generator)
        stop = bool(callback(epoch, logs)) if callback is not None else False
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch" and isinstance(v, float)))
        if stop:
            break
    return history


def sample(generator, z, batch_size: int = 500, labels=None) -> np.ndarray:
    """Generated images for noise ``z`` (N, latent_dim) (and, for a class-conditional
    generator, the digits asked for: ``labels`` (N,)), in eval mode (BatchNorm uses its
    running statistics), mapped to [0, 1]: a host float32 array (N, C, 28, 28)."""
    was_training = generator.training
    generator.eval()
    try:
        n = int(z.shape[0])  # slices clamped: the Array API leaves out-of-range stops undefined
        with no_grad():
            parts = [to_numpy(generator(z[lo:min(lo + batch_size, n), ...], *(
                () if labels is None else (labels[lo:min(lo + batch_size, n)],))))
                for lo in range(0, n, batch_size)]
    finally:
        generator.train(was_training)
    return np.clip((np.concatenate(parts) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
