"""Reading handwritten digits on a page, in NumPy: find each digit, cut it out the way
MNIST's digits were made, and read it with an MNIST-trained model.

    boxes, crops = find_digits(image)            # image: (H, W) grey in [0, 1], dark ink
    results = read_digits(image, model)          # [(box, digit, confidence), ...]

The page is flattened first (divided by a smooth estimate of the paper's brightness, so
uneven light does not matter), thresholded (Otsu, with a floor above the paper's noise),
split into connected components, and fragments of one digit are merged. Each digit is then
size-normalised into a 20x20 box (aspect ratio kept, anti-aliased) and placed in 28x28 with
its centre of mass at pixel (14, 14), white ink on black, as in MNIST. Boxes are
``(x0, y0, x1, y1)`` in pixels, half-open: columns x0..x1-1, rows y0..y1-1. Reading and
drawing picture files is in ``pictures.py``.
"""

from __future__ import annotations

import os

import numpy as np

from dlx._device import asarray, device_of, to_numpy
from dlx._grad_mode import no_grad
from dlx.nn import functional as F

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the training normalisation (dlx.cli.common.NORMALIZATION)
MAX_MARKS = 1500  # marks considered per page (merging compares every pair)


# ---- grey images ------------------------------------------------------------------------------
def as_grey(image) -> np.ndarray:
    """(H, W) float32 in [0, 1] from grey or colour, floats in [0, 1] or integers 0..255."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as Pillow's "L"
    if img.ndim != 2:
        raise ValueError(f"expected a grey (H, W) or colour (H, W, 3) image, got shape {img.shape}")
    if np.asarray(image).dtype.kind in "iu" or (img.size and img.max() > 1.5):
        img = img / 255.0  # 8-bit grey levels
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---- resampling and blur ----------------------------------------------------------------------
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter stretched to the scale when shrinking:
    anti-aliased like Pillow's BILINEAR resize, plain linear interpolation when enlarging."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    w = np.maximum(0.0, 1.0 - np.abs((np.arange(n_in) + 0.5)[None, :] - centres[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def resize(image: np.ndarray, shape) -> np.ndarray:
    """``image`` (H, W) resampled to ``shape`` (h, w), separable and anti-aliased."""
    h, w = (int(s) for s in shape)
    img = np.asarray(image, dtype=np.float64)
    return (_resample_matrix(img.shape[0], h) @ img @ _resample_matrix(img.shape[1], w).T).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge-replicated borders."""
    if sigma <= 0:
        return np.asarray(image, np.float32)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return out.astype(np.float32)


# ---- paper, threshold, components -------------------------------------------------------------
def background(image: np.ndarray, block: int | None = None) -> np.ndarray:
    """A smooth estimate of the paper's brightness under the ink: the 90th percentile of each
    block (blocks hold more paper than ink), the brightest of each 3x3 blocks, averaged over
    3x3 blocks, then interpolated back to full size. ``block`` defaults to 1/16 of the short
    side (at least 16 px): strokes must be thinner than a block."""
    img = np.asarray(image, np.float32)
    H, W = img.shape
    b = int(block or max(16, min(H, W) // 16))
    nby, nbx = -(-H // b), -(-W // b)
    padded = np.pad(img, ((0, nby * b - H), (0, nbx * b - W)), mode="reflect" if min(H, W) > b else "edge")
    blocks = padded.reshape(nby, b, nbx, b).transpose(0, 2, 1, 3).reshape(nby, nbx, b * b)
    grid = np.percentile(blocks, 90, axis=2)
    for reduce in (np.max, np.mean):  # max: a block filled by a thick stroke takes its neighbour's paper
        g = np.pad(grid, 1, mode="edge")
        grid = reduce(np.stack([g[i:i + nby, j:j + nbx] for i in range(3) for j in range(3)]), axis=0)
    ys = np.clip((np.arange(H) + 0.5) / b - 0.5, 0, nby - 1)  # block centres -> pixel rows
    xs = np.clip((np.arange(W) + 0.5) / b - 0.5, 0, nbx - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, nby - 1), np.minimum(x0 + 1, nbx - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def ink_map(image, invert: bool = False) -> np.ndarray:
    """How dark each pixel is relative to the paper around it: 0 on paper, ~1 for black ink.
    ``invert=True`` for light ink on a dark ground."""
    img = as_grey(image)
    if invert:
        img = 1.0 - img
    bg = np.maximum(background(img), 1e-3)
    return np.clip(1.0 - img / bg, 0.0, 1.0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises the between-class variance."""
    hist, edges = np.histogram(np.asarray(values).ravel(), bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0.0
    return float(edges[int(np.argmax(between)) + 1])


def ink_threshold(ink: np.ndarray, min_contrast: float = 0.12) -> float:
    """Otsu on the ink map, kept at least 5 noise sigmas (median absolute deviation of the
    mostly-paper page) and ``min_contrast`` above the paper, so a blank page finds nothing."""
    med = float(np.median(ink))
    sigma = 1.4826 * float(np.median(np.abs(ink - med)))
    return max(otsu_threshold(ink), med + 5 * sigma, med + min_contrast)


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean (H, W) mask: (labels, n), labels 1..n in row-major
    order of first pixel, 0 for background (like ``scipy.ndimage.label``).

    Works on horizontal runs of pixels: runs on neighbouring rows that touch are joined
    (with ``connectivity=8`` diagonal contact counts), then the run graph is collapsed by
    repeated min-label hooking and pointer jumping, all vectorised.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"label_components: connectivity must be 4 or 8, got {connectivity}")
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"label_components: expected a 2-D mask, got shape {m.shape}")
    H, W = m.shape
    labels = np.zeros((H, W), np.int32)
    step = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    row, c0 = np.nonzero(step == 1)  # run starts, row-major
    _, c1 = np.nonzero(step == -1)  # run ends (exclusive), same order
    n = len(row)
    if n == 0:
        return labels, 0
    # Runs in row r-1 touching run b in row r: end > b.c0 - d and start < b.c1 + d.
    d = 1 if connectivity == 8 else 0
    stride = W + 2
    end_keys, start_keys = row * stride + c1, row * stride + c0
    prev = (row - 1) * stride
    lo = np.searchsorted(end_keys, prev + c0 - d, side="right")
    hi = np.searchsorted(start_keys, prev + c1 + d, side="left")
    count = np.maximum(hi - lo, 0)
    b = np.repeat(np.arange(n), count)
    a = np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    parent = np.arange(n)
    while len(a):
        pa, pb = parent[a], parent[b]
        low = np.minimum(pa, pb)
        if np.array_equal(pa, pb):
            break
        np.minimum.at(parent, pa, low)  # hook each root onto the smaller root it touches
        np.minimum.at(parent, pb, low)
        while True:  # pointer jumping: every run points straight at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots, comp = np.unique(parent, return_inverse=True)  # roots ascending = first-pixel order
    lengths = c1 - c0
    flat = np.repeat(row * W + c0 - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    np.put(labels, flat, np.repeat(comp + 1, lengths))
    return labels, len(roots)


def _component_boxes(labels: np.ndarray, n: int):
    """Bounding boxes (n, 4) as x0, y0, x1, y1 (half-open) and pixel counts (n,)."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    area = np.bincount(lab, minlength=n)
    boxes = np.empty((n, 4), np.int64)
    boxes[:, 0] = boxes[:, 1] = np.iinfo(np.int64).max
    boxes[:, 2] = boxes[:, 3] = -1
    np.minimum.at(boxes[:, 0], lab, xs)
    np.minimum.at(boxes[:, 1], lab, ys)
    np.maximum.at(boxes[:, 2], lab, xs + 1)
    np.maximum.at(boxes[:, 3], lab, ys + 1)
    return boxes, area


def _merge_fragments(boxes: np.ndarray, scale: float) -> list[list[int]]:
    """Groups of component indices that make one digit. A broken stroke (the detached top of
    a 5, a 4 or 7 in two pieces) lies close to the rest: within a quarter of the digit's
    height above or below it, an eighth beside it (the next digit on a line is beside).
    Neighbouring digits are further apart, and together would make a box no digit has (too
    tall, or much wider than tall). ``scale`` is the typical digit height. Pairs merge one
    at a time, the closest first."""
    groups = [[i] for i in range(len(boxes))]
    gb = boxes.astype(np.float64)
    alive = np.ones(len(boxes), bool)
    while alive.sum() > 1:
        idx = np.nonzero(alive)[0]
        x0, y0, x1, y1 = (gb[idx, k] for k in range(4))
        h = y1 - y0
        hmax = np.maximum(h[:, None], h[None, :])
        lo_x, hi_x = np.maximum(x0[:, None], x0[None, :]), np.minimum(x1[:, None], x1[None, :])
        lo_y, hi_y = np.maximum(y0[:, None], y0[None, :]), np.minimum(y1[:, None], y1[None, :])
        dx, dy = np.maximum(0, lo_x - hi_x), np.maximum(0, lo_y - hi_y)
        gap = np.hypot(dx, dy)
        stacked = dy >= dx  # one piece above the other (a line's next digit is beside it)
        near = gap <= np.where(stacked, 0.25, 0.12) * np.maximum(hmax, 0.5 * scale)
        uh = np.maximum(y1[:, None], y1[None, :]) - np.minimum(y0[:, None], y0[None, :])
        uw = np.maximum(x1[:, None], x1[None, :]) - np.minimum(x0[:, None], x0[None, :])
        fits = (uh <= np.maximum(1.35 * hmax, 1.6 * scale)) & (uw <= 1.4 * np.maximum(uh, scale))
        ok = near & fits
        np.fill_diagonal(ok, False)
        if not ok.any():
            break
        i, j = np.unravel_index(np.argmin(np.where(ok, gap, np.inf)), ok.shape)
        a, b = idx[i], idx[j]
        groups[a] += groups[b]
        groups[b] = []
        alive[b] = False
        gb[a] = (min(gb[a, 0], gb[b, 0]), min(gb[a, 1], gb[b, 1]), max(gb[a, 2], gb[b, 2]),
                 max(gb[a, 3], gb[b, 3]))
    return [g for g in groups if g]


def _to_mnist(ink: np.ndarray, box_in_crop) -> np.ndarray:
    """One digit's ink (white on black, in [0, 1]) as an MNIST image: the box fitted into
    20x20 keeping the aspect ratio, the whole crop resampled at that scale, then placed in
    28x28 with its centre of mass at pixel (14, 14) (integer shift, as MNIST did)."""
    x0, y0, x1, y1 = box_in_crop
    s = 20.0 / max(y1 - y0, x1 - x0)
    h = max(1, int(round(ink.shape[0] * s)))
    w = max(1, int(round(ink.shape[1] * s)))
    small = np.clip(resize(ink, (h, w)), 0.0, 1.0)
    total = small.sum()
    if total <= 0:
        return np.zeros((28, 28), np.float32)
    cy = (small.sum(axis=1) * np.arange(h)).sum() / total
    cx = (small.sum(axis=0) * np.arange(w)).sum() / total
    top, left = int(round(14 - cy)), int(round(14 - cx))
    pad = max(h, w, 28)
    canvas = np.zeros((28 + 2 * pad, 28 + 2 * pad), np.float32)
    canvas[pad + top:pad + top + h, pad + left:pad + left + w] = small
    return canvas[pad:pad + 28, pad:pad + 28].copy()


def find_digits(image, *, invert: bool = False, smooth: float = 1.0, min_height: int = 8,
                margin: float = 0.1) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """The digits on a page: (boxes, crops). ``boxes`` lists (x0, y0, x1, y1) per digit in
    reading order (lines top to bottom, left to right in a line); ``crops`` (N, 28, 28)
    float32 are MNIST-style images (white ink on black, in [0, 1], not yet normalised).

    ``image`` is (H, W) grey or (H, W, 3) colour, floats in [0, 1] or 0..255, dark ink on
    light paper (``invert=True`` for the reverse). The ink map is blurred by ``smooth``
    pixels before thresholding (the crops are cut from the unblurred one). Marks shorter
    than ``min_height`` pixels or than a third of the typical digit are dropped as specks.
    Touching digits are not split: they come out as one box.
    """
    ink = ink_map(image, invert=invert)
    soft = gaussian_blur(ink, smooth) if smooth else ink  # noise down 3-4x, strokes stay
    thr = ink_threshold(soft)
    labels, n = label_components(soft > thr)
    if n == 0:
        return [], np.zeros((0, 28, 28), np.float32)
    boxes, area = _component_boxes(labels, n)
    heights = boxes[:, 3] - boxes[:, 1]
    keep = np.nonzero(area >= 6)[0]  # noise specks out before anything is measured
    if len(keep) > MAX_MARKS:  # a textured photo: only the largest marks can be digits
        keep = np.sort(keep[np.argsort(area[keep])[::-1][:MAX_MARKS]])
    big = keep[heights[keep] >= min_height]
    if len(big) == 0:
        return [], np.zeros((0, 28, 28), np.float32)
    # typical digit height: the median of the big marks, leaving out fragments under half of it
    scale = float(np.median(heights[big][heights[big] >= 0.5 * np.median(heights[big])]))
    groups = _merge_fragments(boxes[keep], scale)
    out_boxes, crops = [], []
    H, W = ink.shape
    for g in groups:
        ids = keep[g]
        b = np.array([boxes[ids, 0].min(), boxes[ids, 1].min(), boxes[ids, 2].max(), boxes[ids, 3].max()])
        h = b[3] - b[1]
        if h < max(min_height, scale / 3) or area[ids].sum() < 0.02 * h * h:
            continue
        m = max(2, int(round(margin * h)))
        cx0, cy0, cx1, cy1 = max(b[0] - m, 0), max(b[1] - m, 0), min(b[2] + m, W), min(b[3] + m, H)
        own = np.isin(labels[cy0:cy1, cx0:cx1], ids + 1)
        # the ink's soft edge beyond the threshold belongs to the digit: grow its mask by 2 px
        grown = own.copy()
        for _ in range(2):
            g2 = np.pad(grown, 1)
            grown = g2[1:-1, 1:-1] | g2[:-2, 1:-1] | g2[2:, 1:-1] | g2[1:-1, :-2] | g2[1:-1, 2:]
            grown |= g2[:-2, :-2] | g2[:-2, 2:] | g2[2:, :-2] | g2[2:, 2:]
        patch = ink[cy0:cy1, cx0:cx1]
        full = float(np.percentile(patch[own], 90))  # stroke centres -> 1, as in MNIST
        floor = 0.5 * thr
        digit = np.clip((patch - floor) / max(full - floor, 1e-3), 0.0, 1.0) * grown
        crops.append(_to_mnist(digit, (b[0] - cx0, b[1] - cy0, b[2] - cx0, b[3] - cy0)))
        out_boxes.append(tuple(int(v) for v in b))
    order = _reading_order(out_boxes)
    crops = np.asarray([crops[i] for i in order], np.float32).reshape(-1, 28, 28)
    return [out_boxes[i] for i in order], crops


def _lines(boxes) -> list[list[int]]:
    """Indices of boxes grouped into lines of text (top to bottom), each left to right. Boxes
    are taken from the top by their centres; one joins the current line when its centre lies
    within the rows the line spans so far, else it starts a new line."""
    if not len(boxes):
        return []
    b = np.asarray(boxes, float)
    yc, xc = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
    lines: list[list[int]] = []
    bottom = -np.inf
    for i in np.argsort(yc, kind="stable"):
        if yc[i] > bottom:
            lines.append([])
        lines[-1].append(int(i))
        bottom = max(bottom, b[i, 3]) if yc[i] <= bottom else b[i, 3]
    return [sorted(line, key=lambda k: xc[k]) for line in lines]


def _reading_order(boxes) -> list[int]:
    return [i for line in _lines(boxes) for i in line]


def lines(results) -> list[list]:
    """``read_digits``'s results grouped into lines of text, each left to right."""
    return [[results[i] for i in line] for line in _lines([r[0] for r in results])]


# ---- the model ------------------------------------------------------------------------------
def load_mnist_model(path, device=None):
    """The LeNet-5 saved by ``dlx train lenet5 --dataset mnist`` at ``path``, in eval mode.
    Any other checkpoint (another data set or architecture) is refused with a ValueError."""
    import dlx
    from dlx.models import LeNet5
    from dlx.serialization import read_header

    header = read_header(path)
    meta = header.get("meta", {})
    dataset, arch = meta.get("dataset"), meta.get("architecture")
    first = header.get("layers", {}).get("0.weight", {}).get("shape")
    if dataset not in (None, "mnist") or arch not in (None, "lenet5") or first != [6, 1, 5, 5]:
        what = f"{arch or header.get('model_class', 'a model')} trained on {dataset or 'unknown data'}"
        raise ValueError(f"{os.fspath(path)!r} holds {what}; dlx digits needs an MNIST LeNet-5 "
                         f"(dlx train lenet5 --dataset mnist)")
    model = LeNet5(in_channels=1, padding=2, device=dlx.device(device))
    dlx.load(path, model, restore_rng=False)
    model.eval()
    return model


def classify(crops: np.ndarray, model, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(digits, confidences) for MNIST-style crops (N, 28, 28) in [0, 1]: the model's
    arg-max class and its softmax probability."""
    crops = np.asarray(crops, np.float32).reshape(-1, 1, 28, 28)
    if len(crops) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    dev = device_of(next(iter(model.parameters())).data)
    logits = []
    with no_grad():
        for i in range(0, len(crops), batch_size):
            x = (crops[i:i + batch_size] - MNIST_MEAN) / MNIST_STD
            logits.append(to_numpy(model(asarray(x, device=dev))))
    p = F.softmax(np.concatenate(logits).astype(np.float64), dim=1)
    return p.argmax(axis=1), p.max(axis=1).astype(np.float32)


def read_digits(image, model, *, invert: bool = False) -> list[tuple[tuple[int, int, int, int], int, float]]:
    """Find and read every digit: [(box, digit, confidence), ...] in reading order."""
    boxes, crops = find_digits(image, invert=invert)
    digits, conf = classify(crops, model)
    return [(box, int(d), float(c)) for box, d, c in zip(boxes, digits, conf)]
