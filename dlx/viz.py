"""Seeing inside a convnet (Zeiler & Fergus 2014; Simonyan et al. 2014): first-layer
filters, feature maps, saliency, activation maximisation and occlusion sensitivity.

Each computation takes a model and device arrays, runs on the model's device through the
array namespace ``xp`` (explicit backward gives every input gradient for free) and returns
NumPy arrays ready to plot:

    filters = viz.first_layer_filters(model)             # (out, kh, kw, C) in [0, 1]
    maps = viz.feature_maps(model, x, layers=[1, 4])     # {"1:ReLU": (N, 6, 28, 28), ...}
    sal = viz.saliency(model, x, target)                 # (N, H, W) max_c |d logit / d x|
    img, scores = viz.activation_maximisation(model, range(10))   # (K, C, H, W), (steps+1, K)
    drop = viz.occlusion(model, x[0, ...], target, patch=8, stride=2)  # (nh, nw) p drop

The model is put in eval mode and its parameter gradients are switched off while a
function runs; both are restored afterwards, so ``.grad`` and the parameters are left as
they were. Inputs are in the model's units (normalised images); ``to_display`` undoes the
normalisation for plotting. The ``plot_*`` functions write PNGs with matplotlib (optional:
``pip install "dlx[plots]"``); the computations do not need it.
"""

from __future__ import annotations

from contextlib import contextmanager

from dlx._device import device as _device
from dlx._device import device_of, get_namespace, to_numpy

__all__ = [
    "activation_maximisation",
    "feature_maps",
    "first_layer_filters",
    "input_gradient",
    "occlusion",
    "plot_activation_maximisation",
    "plot_feature_maps",
    "plot_filters",
    "plot_occlusion",
    "plot_saliency",
    "saliency",
    "to_display",
]


# --------------------------------------------------------------------------- helpers


@contextmanager
def _inspecting(model):
    """Eval mode and parameter gradients off while inside; the flags are restored after."""
    mods = list(model.modules())
    flags = [(m, m.training, m._grad_enabled) for m in mods]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training, grad_enabled in flags:
            object.__setattr__(m, "training", training)
            object.__setattr__(m, "_grad_enabled", grad_enabled)
        for p, r in requires:
            p.requires_grad = r


def _children(model):
    """[(name, module)] of a container's direct children; [(name, model)] for a single layer."""
    kids = [(n, m) for n, m in model.named_modules() if n and "." not in n]
    return kids or [("0", model)]


def _layer_index(children, layer) -> int:
    """Position of ``layer`` (an int index, a child name "4" or a key "4:ReLU") in children."""
    keys = [f"{n}:{type(m).__name__}" for n, m in children]
    if isinstance(layer, int) and not isinstance(layer, bool):
        if -len(children) <= layer < len(children):
            return layer % len(children)
    else:
        for i, (n, _) in enumerate(children):
            if layer in (n, keys[i]):
                return i
    raise ValueError(f"unknown layer {layer!r}; the model's layers are {', '.join(keys)}")


def _targets(target, n: int, num_classes: int) -> list[int]:
    """``target`` (one int, or one per row) as a list of n class indices, checked."""
    if hasattr(target, "__index__"):
        ts = [int(target)] * n
    else:
        ts = [int(t) for t in target]
    if len(ts) != n:
        raise ValueError(f"got {len(ts)} targets for a batch of {n}")
    bad = [t for t in ts if not 0 <= t < num_classes]
    if bad:
        raise ValueError(f"target(s) {bad} outside [0, {num_classes - 1}]")
    return ts


def _seed_grad(out, ts):
    """dy that picks, for row i, the unit ts[i] of ``out``: one-hot on a (N, K) output, the
    spatial mean of channel ts[i] on an (N, C, H, W) output. Built on out's device."""
    dev = device_of(out)
    shape = tuple(out.shape)
    size = 1
    for s in shape[2:]:
        size *= s
    rows = [[1.0 / size if c == t else 0.0 for c in range(shape[1])] for t in ts]
    xp = get_namespace(out)
    dy = xp.reshape(dev.asarray(rows, dtype=out.dtype), shape[:2] + (1,) * (len(shape) - 2))
    return xp.zeros_like(out) + dy


def _objective_grad(model, x, ts, layer=None):
    """Scores (N,) and d score / d x (device arrays) for the units ``ts``: class logits of
    the model's output (``layer=None``) or channel means / units of one child's output."""
    xp = get_namespace(x)
    if layer is None:
        mods = [model]
    else:
        children = _children(model)
        mods = [m for _, m in children[: _layer_index(children, layer) + 1]]
    out = x
    for m in mods:
        out = m(out)
    if out.ndim not in (2, 4):
        raise ValueError(f"the objective needs an (N, K) or (N, C, H, W) output, got {tuple(out.shape)}")
    ts = _targets(ts, x.shape[0], out.shape[1])
    dy = _seed_grad(out, ts)
    score = xp.sum(xp.reshape(out * dy, (out.shape[0], -1)), axis=1)
    for m in reversed(mods):
        dy = m.backward(dy)
    return score, dy


def _softmax(xp, z):
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def _blur(xp, x):
    """[1 2 1] / 4 in each direction over (N, C, H, W), edges repeated (a small Gaussian)."""
    for axis in (2, 3):
        n = x.shape[axis]
        if n < 3:
            continue
        if axis == 2:
            a = xp.concat([x[:, :, :1, :], x, x[:, :, n - 1:, :]], axis=2)
            x = (a[:, :, :-2, :] + 2 * a[:, :, 1:-1, :] + a[:, :, 2:, :]) / 4
        else:
            a = xp.concat([x[..., :1], x, x[..., n - 1:]], axis=3)
            x = (a[..., :-2] + 2 * a[..., 1:-1] + a[..., 2:]) / 4
    return x


def _as_batch(x):
    return x if x.ndim == 4 else get_namespace(x).reshape(x, (1, *x.shape))


# --------------------------------------------------------------------------- computations


def first_layer_filters(model, raw: bool = False):
    """The first Conv2d's weights as (out, kh, kw, C) NumPy images.

    Scaled for display (default): each filter is divided by twice its largest |weight| and
    shifted by 0.5, so grey is a zero weight and the sign is kept. ``raw=True`` gives the
    weights unscaled.
    """
    from dlx.nn import Conv2d

    conv = next((m for m in model.modules() if isinstance(m, Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    w = conv.weight.data
    xp = get_namespace(w)
    w = xp.permute_dims(w, (0, 2, 3, 1))
    if not raw:
        top = xp.max(xp.abs(xp.reshape(w, (w.shape[0], -1))), axis=1)
        top = xp.where(top > 0, top, xp.ones_like(top))
        w = 0.5 + w / (2 * xp.reshape(top, (-1, 1, 1, 1)))
    return to_numpy(w)


def feature_maps(model, x, layers=None) -> dict:
    """The output of each child layer of a Sequential for the batch ``x``, in eval mode.

    ``layers``: indices, names ("4") or keys ("4:ReLU"); default every layer. Returns
    {"<name>:<Layer>": NumPy array} in layer order (e.g. "1:ReLU" -> (N, 6, 28, 28)).
    """
    children = _children(model)
    wanted = None if layers is None else {_layer_index(children, ly) for ly in layers}
    last = len(children) - 1 if wanted is None else max(wanted, default=-1)
    out = {}
    with _inspecting(model):
        h = x
        for i, (name, m) in enumerate(children[: last + 1]):
            h = m(h)
            if wanted is None or i in wanted:
                out[f"{name}:{type(m).__name__}"] = to_numpy(h)
    return out


def input_gradient(model, x, target):
    """d logit[target] / d x for the batch ``x`` (N, C, H, W), by one explicit backward pass
    seeded with a one-hot dy on the class logits; ``target`` is one class or one per row.
    Returns a NumPy array shaped like x."""
    with _inspecting(model):
        _, g = _objective_grad(model, x, target)
    return to_numpy(g)


def saliency(model, x, target):
    """Saliency map (Simonyan et al. 2014): max over channels of |d logit[target] / d x|,
    NumPy (N, H, W). ``target`` is one class or one per row (e.g. the true labels)."""
    with _inspecting(model):
        _, g = _objective_grad(model, x, target)
        xp = get_namespace(g)
        s = xp.max(xp.abs(g), axis=1)
    return to_numpy(s)


def activation_maximisation(model, target, shape=(3, 32, 32), steps: int = 200, lr: float = 0.05,
                            l2: float = 1e-2, blur: float = 0.3, blur_every: int = 1, bounds=None,
                            layer=None, seed: int = 0, init_std: float = 0.1, device=None):
    """Inputs that maximise a class logit (or a unit) by gradient ascent on the input.

    ``target``: one class or a sequence (one image each, optimised together in one batch);
    with ``layer`` (a child index, name or key) the objective is instead the mean of
    channel ``target`` of that layer's output (or unit ``target`` of a flat output).
    Each step moves x by ``lr`` along the gradient divided by its RMS (per image) and
    decays x by ``lr * l2`` (L2 prior); then, every ``blur_every`` steps, x moves the
    fraction ``blur`` (0: off, 1: all the way) towards itself blurred with [1 2 1]/4 in
    each direction (a smoothness prior). ``bounds=(low, high)``, scalars or one
    value per channel, clips x (e.g. to the normalised images of pixels in [0, 1]). The
    start is N(0, init_std^2) noise from ``seed``, drawn on the host so that every device
    starts from the same image.

    Returns (images (K, *shape), scores (steps + 1, K)) as NumPy: the objective before each
    step and after the last. The model's parameters are not changed.
    """
    from dlx.backends.host_random import NumpyGenerator

    dev = _device(device if device is not None else model.device)
    ts = [int(target)] if hasattr(target, "__index__") else [int(t) for t in target]
    dtype = model.dtype or "float32"
    x = dev.asarray(NumpyGenerator(seed).normal((len(ts), *shape), std=init_std, dtype=dtype))
    xp = get_namespace(x)
    lo = hi = None
    if bounds is not None:
        c = shape[0]
        lo, hi = ([float(v)] * c if isinstance(v, (int, float)) else [float(u) for u in v]
                  for v in bounds)
        lo = xp.reshape(dev.asarray(lo, dtype=dtype), (1, c, 1, 1))
        hi = xp.reshape(dev.asarray(hi, dtype=dtype), (1, c, 1, 1))
        x = xp.minimum(xp.maximum(x, lo), hi)
    scores = []
    with _inspecting(model):
        for step in range(steps + 1):
            score, g = _objective_grad(model, x, ts, layer)
            scores.append(score)
            if step == steps:
                break
            rms = xp.sqrt(xp.mean(xp.reshape(g * g, (g.shape[0], -1)), axis=1) + 1e-20)
            x = x * (1 - lr * l2) + lr * g / xp.reshape(rms, (-1, 1, 1, 1))
            if blur and blur_every and (step + 1) % blur_every == 0:
                x = x + blur * (_blur(xp, x) - x)
            if lo is not None:
                x = xp.minimum(xp.maximum(x, lo), hi)
    return to_numpy(x), to_numpy(xp.stack(scores))


def occlusion(model, x, target: int, patch=8, stride=4, fill=0.0, batch_size: int = 256):
    """Occlusion sensitivity (Zeiler & Fergus 2014): how much p(target) drops when a
    ``patch`` square of one image x (C, H, W) or (1, C, H, W) is replaced by ``fill``.

    ``fill`` is a scalar or one value per channel, in the model's input units (0 is the
    data-set mean for normalised images). The occluded copies go through the model in
    batches of ``batch_size``. Returns NumPy (nh, nw): entry [i, j] is p(target | x) minus
    p(target | x with rows i*stride ... i*stride+ph-1 and columns j*stride ... occluded);
    positive where the patch hid evidence for the class.
    """
    x = _as_batch(x)
    if x.shape[0] != 1:
        raise ValueError(f"occlusion takes one image, got a batch of {x.shape[0]}")
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    _, c, h, w = x.shape
    if not (0 < ph <= h and 0 < pw <= w):
        raise ValueError(f"patch {ph}x{pw} does not fit the {h}x{w} image")
    dev = device_of(x)
    xp = get_namespace(x)
    fills = [float(fill)] * c if isinstance(fill, (int, float)) else [float(v) for v in fill]
    fill_arr = xp.reshape(dev.asarray(fills, dtype=x.dtype), (1, c, 1, 1))
    tops, lefts = list(range(0, h - ph + 1, sh)), list(range(0, w - pw + 1, sw))
    pos = [(i, j) for i in tops for j in lefts]
    rows = xp.reshape(dev.asarray(list(range(h))), (1, h))
    cols = xp.reshape(dev.asarray(list(range(w))), (1, w))
    with _inspecting(model):
        logits = model(x)
        t = _targets(target, 1, logits.shape[1])[0]
        p0 = _softmax(xp, logits)[:, t]
        drops = []
        for s in range(0, len(pos), batch_size):
            chunk = pos[s : s + batch_size]
            ti = xp.reshape(dev.asarray([i for i, _ in chunk]), (-1, 1))
            lj = xp.reshape(dev.asarray([j for _, j in chunk]), (-1, 1))
            in_rows = (rows >= ti) & (rows < ti + ph)                       # (P, H)
            in_cols = (cols >= lj) & (cols < lj + pw)                       # (P, W)
            mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]    # (P, 1, H, W)
            occluded = xp.where(mask, fill_arr, x)                          # (P, C, H, W)
            drops.append(p0 - _softmax(xp, model(occluded))[:, t])
        drop = xp.reshape(xp.concat(drops), (len(tops), len(lefts)))
    return to_numpy(drop)


# --------------------------------------------------------------------------- plotting (host)


def to_display(x, mean=None, std=None):
    """Images (N, C, H, W) or (C, H, W) from any device -> NumPy (N, H, W, C) in [0, 1]
    (grey images -> (N, H, W)), undoing ``Normalize(mean, std)`` when given."""
    import numpy as np

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
        raise ImportError('dlx.viz plotting needs matplotlib: pip install "dlx[plots]"')
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
    import numpy as np

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
    import numpy as np

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
    import numpy as np

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
    import numpy as np

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
    import numpy as np

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
