"""Seeing inside a convnet (Zeiler & Fergus 2014; Simonyan et al. 2014): the computations.
First-layer filters, feature maps, saliency, activation maximisation and occlusion
sensitivity.

Each takes a model and device arrays, runs on the model's device through the array
namespace ``xp`` (explicit backward gives every input gradient for free) and returns NumPy
arrays ready to plot (``plots.py``):

    filters = viz.first_layer_filters(model)             # (out, kh, kw, C) in [0, 1]
    maps = viz.feature_maps(model, x, layers=[1, 4])     # {"1:ReLU": (N, 6, 28, 28), ...}
    sal = viz.saliency(model, x, target)                 # (N, H, W) max_c |d logit / d x|
    img, scores = viz.activation_maximisation(model, range(10))   # (K, C, H, W), (steps+1, K)
    drop = viz.occlusion(model, x[0, ...], target, patch=8, stride=2)  # (nh, nw) p drop

The model is put in eval mode and its parameter gradients are switched off while a
function runs; both are restored afterwards, so ``.grad`` and the parameters are left as
they were. Forward passes with no backward after them (feature maps, occlusion) run under
``no_grad``. Inputs are in the model's units (normalised images).
"""

from __future__ import annotations

from contextlib import contextmanager

from dlx._device import device as _device
from dlx._device import device_of, get_namespace, host_generator, to_numpy
from dlx._grad_mode import no_grad
from dlx.nn import functional as F

__all__ = [
    "activation_maximisation",
    "feature_maps",
    "first_layer_filters",
    "input_gradient",
    "occlusion",
    "saliency",
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
    with _inspecting(model), no_grad():
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
    dev = _device(device if device is not None else model.device)
    ts = [int(target)] if hasattr(target, "__index__") else [int(t) for t in target]
    dtype = model.dtype or "float32"
    start = host_generator(seed).normal((len(ts), *shape), std=init_std, dtype=dtype)
    x = dev.asarray(start)
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
    with _inspecting(model), no_grad():
        logits = model(x)
        t = _targets(target, 1, logits.shape[1])[0]
        p0 = F.softmax(logits, dim=1)[:, t]
        drops = []
        for s in range(0, len(pos), batch_size):
            chunk = pos[s : s + batch_size]
            ti = xp.reshape(dev.asarray([i for i, _ in chunk]), (-1, 1))
            lj = xp.reshape(dev.asarray([j for _, j in chunk]), (-1, 1))
            in_rows = (rows >= ti) & (rows < ti + ph)                       # (P, H)
            in_cols = (cols >= lj) & (cols < lj + pw)                       # (P, W)
            mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]    # (P, 1, H, W)
            occluded = xp.where(mask, fill_arr, x)                          # (P, C, H, W)
            drops.append(p0 - F.softmax(model(occluded), dim=1)[:, t])
        drop = xp.reshape(xp.concat(drops), (len(tops), len(lefts)))
    return to_numpy(drop)
