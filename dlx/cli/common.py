"""What the ``dlx`` commands share: the one-line usage error, the data sets with their
normalisation and augmentation, and the classifier they train and evaluate."""

from __future__ import annotations

import argparse
import importlib.metadata

NORMALIZATION = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}
MODELS = ("lenet5",)


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def version(dist: str) -> str:
    """The installed version of the distribution ``dist``, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_dataset(name: str, train: bool, data_dir):
    from dlx import data

    cls = {"cifar10": data.CIFAR10, "mnist": data.MNIST}[name]
    return cls(root=data_dir, train=train)


def make_transforms(name: str, augment: bool):
    from dlx.data import transforms as T

    steps = []
    if augment:
        size = 32 if name == "cifar10" else 28
        steps.append(T.RandomCrop(size, padding=4 if name == "cifar10" else 2))
        if name == "cifar10":  # digits are not mirror-symmetric
            steps.append(T.RandomHorizontalFlip())
    steps.append(T.Normalize(*NORMALIZATION[name]))
    return T.Compose(steps)


def make_model(name: str, dataset: str, device):
    from dlx.models import LeNet5  # looked up at each call (benchmarks/float32_drift.py swaps it)

    if name != "lenet5":
        raise UsageError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    if dataset == "mnist":
        return LeNet5(in_channels=1, padding=2, device=device)
    return LeNet5(in_channels=3, device=device)


def check_tta(prog, args, dataset):
    if args.tta and dataset != "cifar10":
        raise UsageError(f"{prog}: --tta averages each image with its mirror image, which is only right for "
                         f"cifar10 (a mirrored {dataset} digit is not the same digit); drop --tta")
