"""What the ``dlx`` commands share: the one-line usage error, the data sets with their
normalisation and augmentation, and the classifier they train and evaluate."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys

NORMALIZATION = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}
MODELS = ("lenet5", "mlp", "convnet")
CHANNELS = {"cifar10": 3, "mnist": 1}
IMAGE_SIZE = {"cifar10": 32, "mnist": 28}


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the help says it or there is
    none worth showing (None, a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        prog = self.prog
        if prog == "dlx" and self._subparsers is not None:  # an option of a command: its help
            sub = next((a for a in self._subparsers._group_actions
                        if isinstance(a, argparse._SubParsersAction)), None)
            command = next((c for c in (sys.argv[1:] if self._argv is None else self._argv)
                            if sub is not None and c in sub.choices), None)
            prog = f"dlx {command}" if command else prog
        raise UsageError(f"{prog}: {message} (see {prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        self._argv = args
        return super().parse_known_args(args, namespace)

    _argv = None


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


def parse_hidden(text) -> tuple:
    """``--hidden 256,128`` as (256, 128)."""
    try:
        sizes = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UsageError(f"dlx train: --hidden takes positive layer sizes separated by commas "
                         f"(e.g. --hidden 256,128), got {text!r}")
    return sizes


def make_model(name: str, dataset: str, device, hidden=(256, 128)):
    from dlx import nn
    from dlx.models import MLP, ConvNet, LeNet5  # looked up at each call (float32_drift.py swaps it)

    if name == "mlp":  # images flattened: C * H * W inputs
        inputs = CHANNELS[dataset] * IMAGE_SIZE[dataset] ** 2
        return nn.Sequential(nn.Flatten(), MLP([inputs, *hidden, 10], device=device))
    if name == "convnet":
        return ConvNet(CHANNELS[dataset], image_size=IMAGE_SIZE[dataset], device=device)
    if name != "lenet5":
        raise UsageError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    if dataset == "mnist":
        return LeNet5(in_channels=1, padding=2, device=device)
    return LeNet5(in_channels=3, device=device)


def checkpoint_meta(prog: str, path, dataset=None):
    """The header and ``meta`` of a checkpoint written by ``dlx train``, checked against the
    ``--dataset`` asked for: a checkpoint for another data set is refused with the fix."""
    from dlx.serialization import read_header

    header = read_header(path)
    meta = header.get("meta", {})
    kinds = (("dataset", str), ("architecture", str), ("args", dict), ("history", dict), ("epoch", int))
    bad = [k for k, kind in kinds if k in meta and not isinstance(meta[k], kind)]
    if bad:
        raise ValueError(f"{path!r} is a damaged dlx checkpoint: meta.{bad[0]} has the wrong type; "
                         f"use another checkpoint")
    saved = meta.get("dataset")
    if saved is None:  # not from dlx train: the first layer's input channels tell
        shape = header.get("layers", {}).get("0.weight", {}).get("shape") or [0, 0]
        saved = {1: "mnist", 3: "cifar10"}.get(shape[1] if len(shape) == 4 else None)
    if dataset is not None and saved in CHANNELS and saved != dataset:
        n = CHANNELS[saved]
        raise UsageError(f"{prog}: {path} is for {saved} ({n} channel{'s' * (n != 1)}); use "
                         f"--dataset {saved}")
    return header, meta


def model_for(prog: str, path, meta: dict, dataset: str, device):
    """The model a checkpoint of ``dlx train`` holds: its architecture and hidden sizes."""
    arch = meta.get("architecture", "lenet5")
    if arch not in MODELS:
        raise ValueError(f"{path!r} holds a {str(arch)[:40]!r} model; {prog} knows {', '.join(MODELS)}")
    hidden = (meta.get("args") or {}).get("hidden") or "256,128"
    return make_model(arch, dataset, device, parse_hidden(hidden) if arch == "mlp" else None)


def check_tta(prog, args, dataset):
    if args.tta and dataset != "cifar10":
        raise UsageError(f"{prog}: --tta averages each image with its mirror image, which is only right for "
                         f"cifar10 (a mirrored {dataset} digit is not the same digit); drop --tta")


@contextlib.contextmanager
def out_lock(folder, prog: str):
    """Hold ``folder/.dlx.lock`` (holding this process's id) while a run writes there: a
    second run on the same folder is refused; a lock left by a process that is gone is
    taken over. Removed at the end."""
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid = _lock_owner(path)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise UsageError(f"{prog}: another run (process {pid}) is writing to {folder}; "
                                 f"wait for it to end or choose another --out (if process {pid} is "
                                 f"not a dlx run, delete {path})") from None
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.unlink(path)
    else:
        raise UsageError(f"{prog}: could not lock {folder} (delete {path} and retry)")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield path
    finally:
        if _lock_owner(path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)


LOCK_NAME = ".dlx.lock"


def _lock_owner(path):
    try:
        with open(path) as f:
            return int(f.read(32).strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True
