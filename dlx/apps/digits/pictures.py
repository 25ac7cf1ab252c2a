"""Pictures for ``dlx digits``: reading and writing image files (Pillow), the page annotated
with what was read (matplotlib), and synthetic test pages made from MNIST digits with their
true boxes, and the score of a reading against them.

    image = load_image("page.jpg")               # (H, W) grey in [0, 1]
    annotate(image, read_digits(image, model), "annotated.png")
    page, boxes, labels = synthetic_page(mnist_digits, mnist_labels, rng)

Pillow and matplotlib come with ``pip install "dlx[plots]"``; the method itself
(``reader.py``) needs neither.
"""

from __future__ import annotations

import os

import numpy as np

from dlx.apps.digits.reader import as_grey, gaussian_blur, resize

PLOTS_HINT = 'pip install "dlx[plots]"'


# ---- image files ------------------------------------------------------------------------------
def _deep_grey(im):
    """A grey image of more than 8 bits per pixel as float32 in [0, 1], or None for other
    modes. Pillow's ``convert("L")`` clips these to 0..255, which turns a page into a blank
    one. 16-bit modes ('I;16...') are divided by 65535; 'I' (32-bit int) and 'F' (float, as
    TIFF stores it) by the range the values fit: [0, 1] as is (floats only), then 0..255,
    then 0..65535, else stretched from their minimum to their maximum."""
    if im.mode.startswith("I;16"):
        return (np.asarray(im, dtype=np.float64) / 65535.0).astype(np.float32)
    if im.mode not in ("I", "F"):
        return None
    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the image holds NaN or infinite pixels; save it with finite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1 and im.mode == "F":
        scaled = a
    elif lo >= 0 and hi <= 65535:
        scaled = a / (255.0 if hi <= 255 else 65535.0)
    else:
        scaled = (a - lo) / ((hi - lo) or 1.0)
    return scaled.astype(np.float32)


MAX_PIXELS = 100_000_000  # a 100-megapixel picture is refused: no page of digits needs it
MAX_SIDE = 3000  # larger pictures are shrunk to this many pixels on their longer side


def _open(path: str):
    """The picture opened (not decoded yet) after checking its size; JPEGs are decoded at a
    reduced scale right away when they are large (Pillow's ``draft``)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        im = None
    w, h = (0, 0) if im is None else im.size
    if im is None or w * h > MAX_PIXELS:
        size = "" if im is None else f" ({w}x{h} = {w * h / 1e6:.0f} megapixels)"
        if im is not None:
            im.close()
        raise ValueError(f"{path!r}: picture too large{size}; dlx digits reads pictures of up to "
                         f"{MAX_PIXELS // 1_000_000} megapixels: scale it down (a page needs about "
                         f"{MAX_SIDE} pixels on its longer side)")
    if max(w, h) > MAX_SIDE and im.format == "JPEG":
        im.draft("L", (w * MAX_SIDE // max(w, h), h * MAX_SIDE // max(w, h)))
    return im


def _shrink(im):
    """``im`` with its longer side cut to ``MAX_SIDE`` pixels (box filter), if longer."""
    from PIL import Image

    w, h = im.size
    if max(w, h) <= MAX_SIDE:
        return im
    size = (max(1, round(w * MAX_SIDE / max(w, h))), max(1, round(h * MAX_SIDE / max(w, h))))
    return im.resize(size, Image.Resampling.BOX)


def load_image(path) -> np.ndarray:
    """A picture file (PNG, JPEG, ... anything Pillow reads) as grey float32 (H, W) in [0, 1].
    Pictures larger than ``MAX_SIDE`` pixels are shrunk to it on their longer side; more than
    ``MAX_PIXELS`` pixels are refused (a few kilobytes of PNG can claim billions)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise ImportError(f"reading images needs Pillow: {PLOTS_HINT}") from None
    try:
        with _open(path) as im:
            im = _shrink(ImageOps.exif_transpose(im))  # phone photos store their rotation in EXIF
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)  # transparent = paper, not black
            grey = _deep_grey(im)
            if grey is None:
                grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if str(e).startswith(repr(path)):
            raise
        raise ValueError(f"{path!r} is not an image Pillow can read ({type(e).__name__}: {e})") from None
    if grey.ndim != 2 or min(grey.shape) < 8:
        raise ValueError(f"{path!r}: image of shape {grey.shape} is too small to hold digits")
    return grey


# ---- the annotated page ----------------------------------------------------------------------
def annotate(image, results, path) -> str:
    """Write ``image`` with a box and the predicted digit per result (``read_digits``'s
    list) to the PNG ``path``, at the image's own resolution (enlarged to at least 800 px
    wide), with a white band on top when a label would not fit above its box. Labels are
    blue, or orange with the confidence when it is under 0.9."""
    try:
        from matplotlib.patches import Rectangle

        from dlx.plots import _pyplot, save_figure

        plt = _pyplot()
    except ImportError:
        raise ImportError(f"drawing the annotated image needs matplotlib: {PLOTS_HINT}") from None
    img = as_grey(image)
    H, W = img.shape
    dpi, zoom = 100, max(1.0, 800 / W)
    heights = [b[3] - b[1] for b, _, _ in results]
    label_px = float(np.clip(0.4 * np.median(heights), 10 / zoom, 40)) if heights else 12.0
    size = label_px * zoom * 72 / dpi  # points
    top = min([b[1] for b, _, _ in results], default=H)
    band = int(np.ceil(max(0.0, label_px + 4 - top)))
    fig = plt.figure(figsize=(W * zoom / dpi, (H + band) * zoom / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
    ax.set_axis_off()
    for (x0, y0, x1, y1), digit, conf in results:
        color = "#1f77b4" if conf >= 0.9 else "#ff7f0e"
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.6, ec=color))
        ax.text(x0 - 0.5, y0 - 1.5, f"{digit}" if conf >= 0.9 else f"{digit} {conf:.2f}", color="white",
                fontsize=size, fontweight="bold", va="bottom", ha="left",
                bbox={"boxstyle": "square,pad=0.1", "fc": color, "ec": "none", "alpha": 0.85})
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5 - band)
    return save_figure(fig, path, dpi=dpi, tight=False, facecolor="white")


def save_image(image, path) -> str:
    """A grey image in [0, 1] as an 8-bit PNG (Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"writing images needs Pillow: {PLOTS_HINT}") from None
    Image.fromarray(np.round(np.clip(as_grey(image), 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    return str(path)


# ---- test pages ------------------------------------------------------------------------------
def synthetic_page(digits, labels, rng, *, size=(600, 800), heights=(30, 60), blur=1.0,
                   paper=(0.6, 1.0), ink=(0.1, 0.3), noise=0.03):
    """A photographed page of handwritten digits made from MNIST images, with its truth.

    Each of ``digits`` (N, 28, 28) uint8 is scaled so that its ink is ``heights`` pixels
    tall (uniform at random; as wide, for the rare digit wider than tall) and put in its own
    cell of a grid, at a random place leaving at least 10 % of the cell on each side. It is
    drawn in dark ink (grey level uniform in ``ink``, per digit) on paper whose brightness
    varies smoothly over ``paper`` (a linear gradient in a random direction plus a vignette
    around a random centre), blurred by a Gaussian of ``blur`` pixels, with Gaussian noise
    of std ``noise``. Returns (page (H, W) float32 in [0, 1], boxes (N, 4) int as
    x0, y0, x1, y1 of each digit's visible ink, labels (N,)).
    """
    digits = np.asarray(digits)
    labels = np.asarray(labels)
    H, W = size
    n = len(digits)
    cell = int(np.ceil(heights[1] * 1.6))
    rows, cols = H // cell, W // cell
    if n > rows * cols:
        raise ValueError(f"synthetic_page: {n} digits do not fit on a {H}x{W} page "
                         f"({rows}x{cols} cells of {cell} px for digits up to {heights[1]} px)")
    ch, cw = H // rows, W // cols
    cells = rng.choice(rows * cols, size=n, replace=False)
    coverage = np.zeros((H, W), np.float32)
    darkness = np.zeros((H, W), np.float32)
    boxes = np.zeros((n, 4), np.int64)
    for k, (img, c) in enumerate(zip(digits, cells)):
        a = img.astype(np.float32) / 255.0
        r_ = np.nonzero(a.max(axis=1) > 0.1)[0]
        c_ = np.nonzero(a.max(axis=0) > 0.1)[0]
        if len(r_) == 0:
            raise ValueError(f"synthetic_page: digit {k} has no ink")
        a = a[max(r_[0] - 1, 0):r_[-1] + 2, max(c_[0] - 1, 0):c_[-1] + 2]  # ink plus 1 px of edge
        s = rng.uniform(*heights) / max(r_[-1] - r_[0] + 1, c_[-1] - c_[0] + 1)
        a = np.clip(resize(a, (max(1, round(a.shape[0] * s)), max(1, round(a.shape[1] * s)))), 0, 1)
        h, w = a.shape
        if h > 0.8 * ch or w > 0.8 * cw:
            raise ValueError(f"synthetic_page: a {h}x{w} digit does not fit a {ch}x{cw} cell")
        y = (c // cols) * ch + int(rng.integers(int(0.1 * ch), ch - h - int(0.1 * ch) + 1))
        x = (c % cols) * cw + int(rng.integers(int(0.1 * cw), cw - w - int(0.1 * cw) + 1))
        coverage[y:y + h, x:x + w] = np.maximum(coverage[y:y + h, x:x + w], a)
        darkness[y:y + h, x:x + w] = rng.uniform(*ink)
        ys, xs = np.nonzero(a > 0.25)
        boxes[k] = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
    # paper: linear gradient in a random direction plus a vignette, mapped onto `paper`
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    light = np.cos(t) * xx / W + np.sin(t) * yy / H
    cy, cx = rng.uniform(0, H), rng.uniform(0, W)
    light -= rng.uniform(0.5, 1.5) * (((yy - cy) / H) ** 2 + ((xx - cx) / W) ** 2)
    light = (light - light.min()) / (light.max() - light.min())
    light = paper[0] + (paper[1] - paper[0]) * light
    page = light * (1 - coverage) + darkness * coverage
    page = gaussian_blur(page, blur) + rng.normal(0, noise, size=(H, W))
    return np.clip(page, 0, 1).astype(np.float32), boxes, labels.copy()


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_page(results, true_boxes, true_labels) -> dict:
    """Match detections to the truth one to one (IoU >= 0.5, or the detection's centre inside
    the true box; best IoU first) and count: ``digits``, ``found`` (matched), ``read``
    (matched and the right digit), ``false`` (detections matching nothing), the ``missed``
    and ``misread`` truth indices, and ``match`` {truth index: result index}."""
    pairs = []
    for i, tb in enumerate(true_boxes):
        for j, (db, _, _) in enumerate(results):
            iou = _iou(tb, db)
            cx, cy = (db[0] + db[2]) / 2, (db[1] + db[3]) / 2
            if iou >= 0.5 or (tb[0] <= cx < tb[2] and tb[1] <= cy < tb[3]):
                pairs.append((iou, i, j))
    used_t, used_d, match = set(), set(), {}
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            match[i] = j
    misread = [i for i, j in match.items() if results[j][1] != int(true_labels[i])]
    return {"digits": len(true_boxes), "found": len(match), "read": len(match) - len(misread),
            "false": len(results) - len(match), "missed": sorted(set(range(len(true_boxes))) - used_t),
            "misread": sorted(misread), "match": match}
