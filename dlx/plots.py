"""Pictures of a run: loss/accuracy curves, a confusion matrix and image grids (matplotlib,
Agg backend).

matplotlib is an optional dependency (``pip install "dlx[plots]"``); ``have_matplotlib()``
tells whether it is there.
"""

from __future__ import annotations

import importlib.util
import math
import textwrap

import numpy as np


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110, tight: bool = True, **savefig_kw) -> str:
    """Write ``fig`` to ``path`` (laid out with ``tight_layout`` unless ``tight=False``),
    close it so a long run does not pile up open figures, and return the path."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig_kw)
    _pyplot().close(fig)
    return str(path)


def plot_curves(history: dict, path, title: str = "") -> str:
    """Loss (left) and accuracy (right) per epoch, train and validation, to ``path``."""
    plt = _pyplot()
    epochs = history["epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "loss", "loss (cross-entropy)"), (axes[1], "accuracy", "accuracy")):
        if key in history:
            ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def plot_confusion(counts: np.ndarray, classes, path, title: str = "") -> str:
    """Confusion matrix with counts in each cell, true class down, predicted across."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.65 * n, 0.8 + 0.6 * n))
    im = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    top = counts.max() or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_grid(images, path, title: str = "", caption: str = "", ncols: int = 8,
              row_labels=None) -> str:
    """An image grid (``images`` (N, 1, H, W) in [0, 1], grey) as a PNG with a title;
    ``row_labels`` names each row on the left (e.g. the digit a row was asked for)."""
    plt = _pyplot()
    imgs = np.asarray(images)[:, 0]
    n, h, w = imgs.shape
    nrows, pad = math.ceil(n / ncols), 2
    canvas = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), np.float32)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    fig, ax = plt.subplots(figsize=(6, 6.4))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels is not None:
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(nrows)])
        ax.set_yticklabels(list(row_labels)[:nrows], fontsize=12)
    if title:  # wrapped: a long title would run past the figure's edges
        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=14)
    if caption:  # wrapped too, narrower than the figure: the row labels push the axes right
        ax.set_xlabel("\n".join(textwrap.wrap(caption, 72)))
    return save_figure(fig, path, dpi=100)
