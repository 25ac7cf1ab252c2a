"""Optimizers and learning-rate schedulers with PyTorch's names, defaults and update
formulas, written once against the array namespace so they run on every device."""

from dlx.optim import lr_scheduler
from dlx.optim.adagrad import Adagrad
from dlx.optim.adam import Adam, AdamW
from dlx.optim.optimizer import Optimizer
from dlx.optim.rmsprop import RMSprop
from dlx.optim.sgd import SGD

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "lr_scheduler"]
