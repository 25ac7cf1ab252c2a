"""Training loops: ``fit`` / ``evaluate`` with callbacks for supervised models (``supervised.py``) and
``train_gan`` / ``gan_step`` for GANs (``gan.py``). ``dlx.fit``, ``dlx.evaluate``,
``dlx.Checkpoint``, ... are these."""

from dlx.training.gan import copy_buffers_, ema_update_, gan_step, sample, train_gan
from dlx.training.supervised import (
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    evaluate,
    fit,
    flip_averaged_log_probs,
)

__all__ = [
    "Callback", "Checkpoint", "EarlyStopping", "History", "copy_buffers_", "ema_update_",
    "evaluate", "fit", "flip_averaged_log_probs", "gan_step", "sample", "train_gan",
]
