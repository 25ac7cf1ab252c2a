"""The classifier training loop: ``dlx.fit`` (epochs, validation, history, progress bar, callbacks,
learning-rate schedulers, resume) and ``dlx.evaluate``, as Keras' ``fit`` does it.

A step is: forward, loss, explicit backward, optimizer step, zero_grad, and reads nothing
back from the device: the epoch's loss sum, correct count and finite-loss run are device
scalars the step adds to, read once at the end of the epoch (a NaN is then reported with the
step that made it); every ``PROGRESS_EVERY`` steps the progress bar starts an asynchronous
copy of the running figures and shows it once it has landed. So the step can be captured
whole into a CUDA graph (``fit(graph=True)``, see dlx/compile.py).
"""

from __future__ import annotations

import math
import os
import time

from dlx import distributed
from dlx._device import device_of, get_default_device, get_namespace, to_numpy
from dlx._grad_mode import no_grad
from dlx.compile import compile_step
from dlx.nn import functional as F
from dlx.serialization import save
from dlx.training._first_step import first_step_compiled, say_compile_note

#: the progress bar starts a copy of the running loss and accuracy every this many steps and
#: shows it when it has landed (the host never waits for it); the epoch's figures are read once
PROGRESS_EVERY = 50


class History:
    """Per-epoch records: ``history["loss"][e]``, ``"accuracy"``, ``"val_loss"``,
    ``"val_accuracy"``, ``"lr"``, ``"time_s"``, ``"images_per_s"``, ``"epoch"`` (1-based)."""

    def __init__(self, history: dict | None = None):
        self.history: dict = {k: list(v) for k, v in (history or {}).items()}

    def append(self, logs: dict) -> None:
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def __len__(self):
        return len(self.history.get("epoch", []))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.history.items()}


class Callback:
    """Hooks called by ``fit``. ``on_epoch_end`` may return True to stop training."""

    def on_train_begin(self, state: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, state: dict) -> bool | None:
        return None

    def on_train_end(self, state: dict) -> None:
        pass


def _better(mode: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode_for(monitor: str, mode: str) -> str:
    if mode != "auto":
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        return mode
    return "max" if "acc" in monitor else "min"


class Checkpoint(Callback):
    """Save model, optimizer, scheduler, epoch, history and RNG state to ``path`` every
    ``every`` epochs (and after the last one). With ``keep_best``, also keep the epoch
    with the best ``monitor`` value in ``<path stem>.best.npz``. ``meta`` is saved too."""

    def __init__(self, path, every: int = 1, keep_best: bool = False, monitor: str = "val_loss",
                 mode: str = "auto", meta: dict | None = None):
        if every < 1:
            raise ValueError(f"Checkpoint: every must be >= 1, got {every}")
        self.path, self.every, self.keep_best = os.fspath(path), int(every), bool(keep_best)
        self.monitor, self.mode = monitor, _mode_for(monitor, mode)
        self.meta = dict(meta or {})  # saved with every checkpoint (e.g. model name, data set)
        self.best: float | None = None
        self.last_saved: str | None = None

    @property
    def best_path(self) -> str:
        stem, ext = os.path.splitext(self.path)
        return f"{stem}.best{ext or '.npz'}"

    def _write(self, path, state, epoch):
        if not distributed.is_main():  # data parallel: one file, written by rank 0
            return
        sched = state.get("scheduler")
        save(path, state["model"], state["optimizer"], **{
            **self.meta, "epoch": epoch + 1, "history": state["history"].to_dict(),
            "scheduler": None if sched is None else sched.state_dict()})

    def on_epoch_end(self, epoch, logs, state):
        last = epoch + 1 == state["epochs"]
        if (epoch + 1) % self.every == 0 or last:
            self._write(self.path, state, epoch)
            self.last_saved = self.path
        if self.keep_best:
            value = logs.get(self.monitor)
            if value is None:
                raise KeyError(f"Checkpoint: monitor {self.monitor!r} is not among the logged "
                               f"values {sorted(logs)}")
            if _better(self.mode, value, self.best):
                self.best = value
                self._write(self.best_path, state, epoch)
        return None


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto"):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = _mode_for(monitor, mode)
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch, logs, state):
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not among the logged "
                           f"values {sorted(logs)}")
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch + 1
            return True
        return False


def epoch_line(logs: dict, epochs: int) -> str:
    """One epoch's figures as Keras prints them: ``epoch 3/10 - 5.2 s - loss 1.2345 -
    accuracy 0.5678 - val_loss 1.3456 - val_accuracy 0.5432 - 10,820 img/s - lr 6.7e-05``."""
    parts = [f"epoch {logs['epoch']}/{epochs}"]
    if "time_s" in logs:
        parts.append(f"{logs['time_s']:.1f} s")
    known = {"epoch", "time_s", "images_per_s", "lr"}
    parts += [f"{k} {v:.4f}" for k, v in logs.items() if k not in known and isinstance(v, float)]
    if "images_per_s" in logs:
        parts.append(f"{logs['images_per_s']:,.0f} img/s")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.2g}")
    return " - ".join(parts)


def _correct(xp, out, y):
    """Number of rows of ``out`` whose argmax is the label, as a 0-d device array."""
    return xp.sum(xp.astype(xp.argmax(out, axis=1) == y, xp.int64))


def _weights_finite(model) -> bool:
    """Whether every floating parameter and buffer of ``model`` is finite: one device-side
    reduction, read back once."""
    ok = None
    for v in model.state_dict().values():
        xp = get_namespace(v)
        if not xp.isdtype(v.dtype, "real floating"):
            continue
        flag = xp.all(xp.isfinite(v))
        ok = flag if ok is None else xp.logical_and(ok, flag)
    return ok is None or bool(to_numpy(ok))


def _stopped(message: str, callbacks) -> FloatingPointError:
    """The error of a non-finite loss or weights, naming the last checkpoint (written only
    from weights checked finite) or saying none was written."""
    ckpts = [cb for cb in callbacks if isinstance(cb, Checkpoint)]
    saved = [cb.last_saved for cb in ckpts if cb.last_saved]
    if saved:
        message += f"; the last good checkpoint is {saved[-1]}"
    elif ckpts:
        message += "; no checkpoint was written by this run"
    return FloatingPointError(message)


def flip_averaged_log_probs(model, x):
    """Test-time augmentation by mirroring: log of the mean of softmax(model(x)) and
    softmax(model(x flipped left-right)), for images (N, C, H, W). Fed to CrossEntropyLoss
    as logits, it gives -log of the averaged probability of the label."""
    xp = get_namespace(x)
    with no_grad():
        mean_p = (F.softmax(model(x), dim=1) + F.softmax(model(xp.flip(x, axis=-1)), dim=1)) * 0.5
    return xp.log(xp.maximum(mean_p, xp.finfo(mean_p.dtype).smallest_normal))


def evaluate(model, loss_fn, loader, metrics=("accuracy",), flip_tta: bool = False) -> dict:
    """Mean loss (and accuracy) of ``model`` over ``loader`` in eval mode. With ``flip_tta``
    each image is scored by its averaged prediction with its mirror image (see
    ``flip_averaged_log_probs``; only for data where a mirrored image keeps its label)."""
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    try:
        for x, y in loader:
            with no_grad():  # inference: the model and the loss keep nothing for backward
                out = flip_averaged_log_probs(model, x) if flip_tta else model(x)
                loss = loss_fn(out, y)
            xp = get_namespace(out)
            total += float(to_numpy(loss)) * y.shape[0]
            if "accuracy" in metrics:
                correct += int(to_numpy(_correct(xp, out, y)))
            n += y.shape[0]
    finally:
        model.train(was_training)
    if distributed.world_size() > 1:  # each rank scored its shard: add them up
        total, correct, n = _sum_over_ranks(total, correct, n)
    if n == 0:
        raise ValueError("evaluate: the loader produced no batches")
    logs = {"loss": total / n}
    if "accuracy" in metrics:
        logs["accuracy"] = correct / n
    return logs


class _EpochSums:
    """The epoch's figures as device scalars a step adds to in place (the same arrays for the
    whole run: a captured step keeps their addresses): the loss x batch size sum (float64,
    added in step order, as Python would), the correct count, the steps taken and how many
    of them in a row, from the first, had a finite loss."""

    def __init__(self, dev):
        xp, where = dev.xp, dev.array_device
        self.xp = xp
        self.loss = xp.zeros((), dtype=xp.float64, device=where)
        self.correct = xp.zeros((), dtype=xp.int64, device=where)
        self.steps = xp.zeros((), dtype=xp.int64, device=where)
        self.finite_run = xp.zeros((), dtype=xp.int64, device=where)

    def reset(self):
        for a in (self.loss, self.correct, self.steps, self.finite_run):
            a[...] = 0

    def add(self, loss, n, hits=None):
        xp = self.xp
        self.loss += xp.astype(loss, xp.float64) * n
        if hits is not None:
            self.correct += hits
        self.finite_run += xp.astype(xp.isfinite(loss) & (self.finite_run == self.steps), xp.int64)
        self.steps += 1

    def read(self, epoch, callbacks):
        """(loss sum, correct count), read back at once; a step whose loss was not finite
        stops training, naming it."""
        xp = self.xp
        values = to_numpy(xp.stack([self.loss, xp.astype(self.correct, xp.float64),
                                    xp.astype(self.steps, xp.float64),
                                    xp.astype(self.finite_run, xp.float64)]))  # the one read
        total, correct, steps, run = values.tolist()
        if run < steps:
            raise _stopped(f"loss became {total} at epoch {epoch + 1}, step {int(run) + 1}: "
                           f"training stopped (try a lower learning rate; labels outside the "
                           f"classes also give NaN: dlx.set_debug(True) checks them)", callbacks)
        return total, int(correct)


def _show_running(bar, reading, step, seen, untimed, t0, sums, accuracy):
    """The progress bar's running loss, accuracy and speed, without making the host wait for
    the device: every ``PROGRESS_EVERY`` steps a copy of the sums starts (``start_read``);
    the bar shows it once it has landed, some steps later. Returns the read in flight."""
    if reading is not None:
        value = reading[0]()
        if value is None:
            return reading
        loss_sum, correct = value.tolist()
        n = reading[1]
        post = {"loss": f"{loss_sum / n:.4f}"}
        if accuracy:
            post["acc"] = f"{correct / n:.4f}"
        post["img/s"] = f"{(seen - untimed) / max(time.perf_counter() - t0, 1e-9):.0f}"
        bar.set_postfix(post, refresh=False)
    if seen and step % PROGRESS_EVERY == 0:
        xp = sums.xp
        figures = xp.stack([sums.loss, xp.astype(sums.correct, xp.float64)])
        return device_of(figures).backend.start_read(figures), seen
    return None


def _sum_over_ranks(*values):
    """Host numbers summed over the ranks of a data-parallel run (one small all-reduce)."""
    import numpy as np

    out = distributed.all_reduce(np.asarray(values, dtype=np.float64))
    return tuple(float(v) for v in out)


def fit(model, loss_fn, optimizer, train_loader, epochs: int, val_loader=None, scheduler=None,
        callbacks=(), metrics=("accuracy",), progress: bool = True, initial_epoch: int = 0,
        history: History | dict | None = None, graph: bool = False) -> History:
    """Train for epochs ``initial_epoch .. epochs - 1`` and return the ``History``.

    ``scheduler`` steps once an epoch (once a batch where its ``per_batch`` is True, as
    for OneCycleLR). ``callbacks``:
    ``Checkpoint``, ``EarlyStopping`` or any ``Callback``. ``progress`` shows one tqdm bar
    per epoch (loss, accuracy, images/s); False prints nothing. To resume, load a checkpoint
    with ``dlx.load`` and pass ``initial_epoch=meta["epoch"]`` and ``history=meta["history"]``.
    Under ``mpiexec -n N`` (``dlx.distributed``) each rank trains on its shard of a loader
    made with ``shard=(rank, world)``, gradients are averaged between backward and the
    optimizer step (weighted by ``shard_weight`` for an uneven last batch), the epoch's
    figures are summed over the ranks, and only rank 0 shows progress and writes checkpoints.
    A NaN or infinite loss raises FloatingPointError naming the epoch and step; checkpoints
    already written are kept. Weights are checked finite at the end of each epoch (and the
    validation loss, if any) before any callback runs, so a checkpoint holds good weights.
    ``graph=True``: on cuda, each step (forward, loss, backward, optimizer step) is replayed as
    one captured CUDA graph (``dlx.compile_step``); elsewhere, and under ``mpiexec`` (the
    gradient all-reduce runs between backward and the step), the step runs eagerly.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"fit: initial_epoch {initial_epoch} is outside 0..{epochs}")
    unknown = set(metrics) - {"accuracy"}
    if unknown:
        raise ValueError(f"fit: unknown metrics {sorted(unknown)}; available: ['accuracy']")
    hist = history if isinstance(history, History) else History(history)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "history": hist,
             "epochs": epochs}
    per_batch = scheduler is not None and getattr(scheduler, "per_batch", False)
    parallel = distributed.world_size() > 1
    sharded = parallel and getattr(train_loader, "world", 1) > 1
    progress = progress and distributed.is_main()
    for cb in callbacks:
        cb.on_train_begin(state)
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(initial_epoch)
    from tqdm.auto import tqdm

    sums = None
    accuracy = "accuracy" in metrics

    def forward_backward(x, y):
        out = model(x)
        loss = loss_fn(out, y)
        model.backward_params(loss_fn.backward())  # dL/dx of the input is not needed
        sums.add(loss, y.shape[0], _correct(get_namespace(out), out, y) if accuracy else None)

    def train_step(x, y):
        forward_backward(x, y)
        optimizer.step()
        optimizer.zero_grad()

    step_fn = compile_step(train_step, graph=graph and not parallel)
    if initial_epoch < epochs:
        say_compile_note(model.device or get_default_device(), progress)
    for epoch in range(initial_epoch, epochs):
        model.train()
        lr = float(optimizer.param_groups[0]["lr"])
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        t0 = time.perf_counter()
        seen, untimed, reading = 0, 0, None
        if sums is not None:
            sums.reset()
        for step, (x, y) in enumerate(train_loader):
            n = y.shape[0]  # 0 only on a rank whose part of a short last batch is empty
            if sums is None:
                sums = _EpochSums(device_of(x))
            if parallel:  # the gradients are averaged between backward and the update
                if n:
                    forward_backward(x, y)
                distributed.allreduce_gradients(
                    model, weight=train_loader.shard_weight(step) if sharded else None)
                optimizer.step()
                optimizer.zero_grad()
            else:
                step_fn(x, y)
            seen += n
            if per_batch:
                scheduler.step()
            if step == 0 and epoch == initial_epoch and first_step_compiled(t0, bar, progress):
                # keep it out of the epoch's time, its speed and the bar's rate and ETA
                if progress:
                    bar.reset(total=len(train_loader))
                t0, untimed = time.perf_counter(), seen
            if progress:
                reading = _show_running(bar, reading, step, seen, untimed, t0, sums, accuracy)
                bar.update(1)
        elapsed = time.perf_counter() - t0
        bar.close()
        total, correct = sums.read(epoch, callbacks) if sums is not None else (0.0, 0)
        if parallel:
            total, correct, seen, untimed = _sum_over_ranks(total, correct, seen, untimed)
        if seen == 0:
            raise ValueError("fit: the training loader produced no batches")
        if not _weights_finite(model):  # the last step's loss was finite, its result may not be
            raise _stopped(f"the weights became NaN or infinite in the last step of epoch "
                           f"{epoch + 1} ({step + 1} steps): training stopped (try a lower "
                           f"learning rate)", callbacks)
        logs = {"epoch": epoch + 1, "loss": total / seen}
        if "accuracy" in metrics:
            logs["accuracy"] = correct / seen
        logs.update({"lr": lr, "time_s": elapsed, "images_per_s": (seen - untimed) / elapsed})
        if val_loader is not None:
            val = evaluate(model, loss_fn, val_loader, metrics)
            logs.update({f"val_{k}": v for k, v in val.items()})
            if not math.isfinite(val["loss"]):
                raise _stopped(f"validation loss became {val['loss']} after epoch {epoch + 1}: "
                               f"training stopped (try a lower learning rate)", callbacks)
        if scheduler is not None and not per_batch:
            scheduler.step()
        hist.append(logs)
        if progress:
            tqdm.write(epoch_line(logs, epochs))
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(epoch, logs, state)) or stop
        if stop:
            break
    for cb in callbacks:
        cb.on_train_end(state)
    return hist
