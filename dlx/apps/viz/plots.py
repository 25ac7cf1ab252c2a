"""Pictures of what ``methods.py`` computes: filters, feature maps, saliency and occlusion
maps over their images, and the images found by activation maximisation, as PNGs
(matplotlib, optional: ``pip install "dlx[plots]"``). ``to_display`` turns normalised
device images into NumPy images in [0, 1] for them.
"""

from __future__ import annotations

import numpy as np

from dlx._device import to_numpy

__all__ = [
    "plot_activation_maximisation",
    "plot_feature_maps",
    "plot_filters",
    "plot_occlusion",
    "plot_saliency",
    "to_display",
]


def to_display(x, mean=None, std=None):
    """Images (N, C, H, W) or (C, H, W) from any device -> NumPy (N, H, W, C) in [0, 1]
    (grey images -> (N, H, W)), undoing ``Normalize(mean, std)`` when given."""
    a = np.asarray(to_numpy(x), dtype=np.float64)
    if a.ndim == 3:
        a = a[None]
    if std is not None:
        a = a * np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    if mean is not None:
        a = a + np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    a = np.clip(a, 0.0, 1.0).transpose(0, 2, 3, 1)
    return a[..., 0] if a.shape[-1] == 1 else a


def _pyplot():
    from dlx.plots import _pyplot as pyplot
    from dlx.plots import have_matplotlib

    if not have_matplotlib():
        raise ImportError('dlx.apps.viz plotting needs matplotlib: pip install "dlx[plots]"')
    return pyplot()


def _image(ax, img, interpolation="nearest"):
    """An image tile without ticks (RGB (H, W, 3) or grey (H, W) in [0, 1])."""
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0.0, vmax=1.0,
              interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path, title, dpi=100):
    from dlx.plots import save_figure

    if title:
        fig.suptitle(title, fontsize=13)
    return save_figure(fig, path, dpi=dpi, tight=False)


def plot_filters(filters, path, title: str = "") -> str:
    """First-layer filters, raw weights (out, kh, kw, C) from ``first_layer_filters(model,
    raw=True)``: each filter as an RGB image (scaled per filter, grey = 0) on the top row
    when C is 3, then each input channel's weights on one shared signed colour scale."""
    plt = _pyplot()
    w = np.asarray(filters, np.float64)
    n, kh, kw, c = w.shape
    rgb = c == 3
    rows = c + rgb
    fig, axes = plt.subplots(rows, n, figsize=(1.3 * n + 1.6, 1.35 * rows + 0.9), squeeze=False,
                             layout="constrained")
    top = np.abs(w).max() or 1.0
    names = ["R", "G", "B"] if rgb else [f"ch {k}" for k in range(c)]
    im = None
    for k in range(n):
        if rgb:
            scale = np.abs(w[k]).max() or 1.0
            _image(axes[0, k], 0.5 + w[k] / (2 * scale), interpolation="nearest")
            axes[0, k].set_title(f"filter {k}", fontsize=10)
        for ch in range(c):
            ax = axes[rgb + ch, k]
            im = ax.imshow(w[k, :, :, ch], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if not rgb and ch == 0:
                ax.set_title(f"filter {k}", fontsize=10)
    if rgb:
        axes[0, 0].set_ylabel("RGB\n(grey = 0)", fontsize=10)
    for ch in range(c):
        axes[rgb + ch, 0].set_ylabel(f"{names[ch]} weights", fontsize=10)
    fig.colorbar(im, ax=axes[rgb:, :].ravel().tolist(), shrink=0.9, label="weight")
    return _save(fig, path, title)


def plot_feature_maps(image, maps: dict, path, title: str = "", ncols: int = 8) -> str:
    """One input image (H, W, C) or (H, W) in [0, 1] and its feature maps: ``maps`` as from
    ``feature_maps`` (key -> (1, C, h, w) or (C, h, w)); each layer wraps to ``ncols``
    channels a row and has its own colour scale and colour bar."""
    plt = _pyplot()
    layers = [(k, np.asarray(v)[0] if np.asarray(v).ndim == 4 else np.asarray(v))
              for k, v in maps.items()]
    layer_rows = [max(1, -(-m.shape[0] // ncols)) for _, m in layers]
    nrows = sum(layer_rows)
    fig = plt.figure(figsize=(1.2 * ncols + 3.9, 1.3 * nrows + 0.8), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols + 3, width_ratios=[2.4, 0.2] + [1] * ncols + [0.12])
    ax = fig.add_subplot(grid[: min(2, nrows), 0])
    _image(ax, np.asarray(image))
    ax.set_title("input", fontsize=10)
    row = 0
    for (key, m), nr in zip(layers, layer_rows):
        lo, hi = float(m.min()), float(m.max())
        if hi <= lo:
            hi = lo + 1.0
        for ch in range(m.shape[0]):
            r, col = divmod(ch, ncols)
            a = fig.add_subplot(grid[row + r, 2 + col])
            im = a.imshow(m[ch], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"ch {ch}", fontsize=8, pad=2)
            if col == 0 and r == 0:
                a.set_ylabel(f"{key}\n{m.shape[0]} @ {m.shape[1]}x{m.shape[2]}", fontsize=9)
        fig.colorbar(im, cax=fig.add_subplot(grid[row : row + nr, -1]), label="activation")
        row += nr
    return _save(fig, path, title)


def _column_titles(axes_row, titles):
    for ax, t in zip(axes_row, titles or []):
        ax.set_title(t, fontsize=9)


def plot_saliency(images, maps, path, titles=None, title: str = "") -> str:
    """Images (N, H, W, C) in [0, 1] over their saliency maps (N, H, W), each map divided by
    its own maximum; ``titles`` label the columns (e.g. true and predicted class)."""
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps, np.float64)
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n + 1.4, 5.2), squeeze=False, layout="constrained")
    im = None
    for k in range(n):
        s = maps[k] / (maps[k].max() or 1.0)
        _image(axes[0, k], images[k])
        im = axes[1, k].imshow(s, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        grey = images[k].mean(axis=-1) if images[k].ndim == 3 else images[k]
        _image(axes[2, k], grey)
        axes[2, k].imshow(s, cmap="inferno", vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
        for r in (1, 2):
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
    _column_titles(axes[0], titles)
    axes[0, 0].set_ylabel("image", fontsize=10)
    axes[1, 0].set_ylabel("saliency", fontsize=10)
    axes[2, 0].set_ylabel("overlay", fontsize=10)
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.9,
                 label="|d logit / d pixel|\n(/ image max)")
    return _save(fig, path, title)


def plot_occlusion(images, maps, path, patch, stride, titles=None, title: str = "") -> str:
    """Images (N, H, W, C) in [0, 1] over their occlusion maps (N, nh, nw) from
    ``occlusion``: each cell drawn at its patch's centre, one signed colour scale for all."""
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps, np.float64)
    n = len(images)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    top = float(np.abs(maps).max()) or 1.0
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n + 1.4, 5.2), squeeze=False, layout="constrained")
    im = None
    for k in range(n):
        nh, nw = maps[k].shape
        h, w = images[k].shape[:2]
        # centre of cell (i, j) is at pixel i*sh + (ph-1)/2; extent in pixel-edge coordinates
        extent = (-0.5 + (pw - 1) / 2 - sw / 2, -0.5 + (pw - 1) / 2 + (nw - 0.5) * sw,
                  -0.5 + (ph - 1) / 2 + (nh - 0.5) * sh, -0.5 + (ph - 1) / 2 - sh / 2)
        _image(axes[0, k], images[k])
        im = axes[1, k].imshow(maps[k], cmap="RdBu_r", vmin=-top, vmax=top, extent=extent,
                               interpolation="nearest")
        grey = images[k].mean(axis=-1) if images[k].ndim == 3 else images[k]
        _image(axes[2, k], grey)
        alpha = 0.85 * np.clip(np.abs(maps[k]) / top * 3, 0, 1)  # clear where nothing changes
        axes[2, k].imshow(maps[k], cmap="RdBu_r", vmin=-top, vmax=top, extent=extent, alpha=alpha,
                          interpolation="nearest")
        for r in (1, 2):
            axes[r, k].set_xlim(-0.5, w - 0.5)
            axes[r, k].set_ylim(h - 0.5, -0.5)
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
    _column_titles(axes[0], titles)
    axes[0, 0].set_ylabel("image", fontsize=10)
    axes[1, 0].set_ylabel(f"occluded {ph}x{pw}\nstride {sh}", fontsize=10)
    axes[2, 0].set_ylabel("overlay", fontsize=10)
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.9,
                 label="drop in p(class)\nwhen the patch is grey")
    return _save(fig, path, title)


def plot_activation_maximisation(images, path, titles=None, scores=None, title: str = "") -> str:
    """Images (K, H, W, C) in [0, 1] found by ``activation_maximisation`` in a row, and
    (when ``scores`` (steps + 1, K) is given) the objective of each over the steps."""
    plt = _pyplot()
    images = np.asarray(images)
    k = len(images)
    has_curve = scores is not None
    fig = plt.figure(figsize=(1.45 * k + 0.6, 2.2 + 3.0 * has_curve), layout="constrained")
    grid = fig.add_gridspec(2 if has_curve else 1, k, height_ratios=[1, 1.9] if has_curve else [1])
    colors = plt.get_cmap("tab10")
    for i in range(k):
        ax = fig.add_subplot(grid[0, i])
        _image(ax, images[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9, color=colors(i % 10) if has_curve else "black")
    if has_curve:
        s = np.asarray(scores)
        ax = fig.add_subplot(grid[1, :])
        for i in range(k):
            ax.plot(np.arange(len(s)), s[:, i], color=colors(i % 10),
                    label=None if titles is None else titles[i].split("\n")[0])
        ax.set_xlabel("gradient-ascent step")
        ax.set_ylabel("objective (class logit)")
        ax.grid(alpha=0.3)
        if titles is not None:
            ax.legend(fontsize=8, ncol=min(k, 5), loc="lower right")
    return _save(fig, path, title)
