"""k-means clustering of a data set on the host (NumPy, float64): cluster indices that can
stand in for labels where there are none, e.g. ``dlx gan --clusters K``, a GAN conditioned on
the clusters of its training images (a self-conditioned GAN, Liu et al., 2020) instead of
their classes.

    centers, assignment = kmeans(images.reshape(len(images), -1) / 255.0, 50, seed=0)

``deskew`` straightens handwriting before clustering (each image sheared so that its
principal axis is vertical, and centred; from the image's own moments, no labels): on the
MNIST training set the 50 k-means clusters of deskewed pixels agree with the digits for
89.5 % of the images, against 81.5 % for raw pixels (the most common label of each
cluster; measured 2026-12-01, seed 0).
"""

from __future__ import annotations

import numpy as np

__all__ = ["deskew", "kmeans"]


def _sq_distances(x, x_sq, centers):
    """(N, K) squared distances ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, at least 0."""
    d = x_sq[:, None] - 2.0 * (x @ centers.T) + np.einsum("kd,kd->k", centers, centers)[None, :]
    return np.maximum(d, 0.0)


def kmeans(x, k: int, seed: int = 0, max_iter: int = 100, chunk: int = 8192):
    """Lloyd's k-means of the rows of ``x`` (N, D) into ``k`` clusters, seeded k-means++
    initialisation (Arthur & Vassilvitskii, 2007); stops when no row changes cluster or after
    ``max_iter`` rounds. The arithmetic is float64, on ``chunk`` rows at a time (``x`` itself
    stays as given: float32 images need no float64 copy). A cluster left empty is given the
    row farthest from its center. Returns (centers (k, D) float64, assignment (N,) int64,
    0..k-1), the clusters numbered by decreasing size (ties: in their first order). The same
    ``seed`` gives the same clusters."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans: expected a non-empty (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= len(x):
        raise ValueError(f"kmeans: k must be an int from 1 to the {len(x)} rows, got {k!r}")
    if not np.isfinite(x).all():
        raise ValueError("kmeans: the data holds NaN or infinite values")
    rng = np.random.default_rng(seed)
    n = len(x)
    blocks = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]

    def rows(lo, hi):
        return x[lo:hi].astype(np.float64, copy=False)

    x_sq = np.concatenate([np.einsum("nd,nd->n", rows(lo, hi), rows(lo, hi)) for lo, hi in blocks])

    def distances_to(centers):  # (N, len(centers))
        return np.concatenate([_sq_distances(rows(lo, hi), x_sq[lo:hi], centers) for lo, hi in blocks])

    # k-means++: each next center drawn with probability proportional to the squared
    # distance to the nearest center chosen so far
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = distances_to(centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[j] = x[pick]
        closest = np.minimum(closest, distances_to(centers[j:j + 1])[:, 0])

    def assign(centers):  # nearest center of each row, the squared distance to it, the sums
        idx, dist = np.empty(n, np.int64), np.empty(n)
        sums = np.zeros_like(centers)
        for lo, hi in blocks:
            xr = rows(lo, hi)
            d = _sq_distances(xr, x_sq[lo:hi], centers)
            idx[lo:hi] = d.argmin(axis=1)
            dist[lo:hi] = d[np.arange(hi - lo), idx[lo:hi]]
            onehot = np.zeros((hi - lo, len(centers)))
            onehot[np.arange(hi - lo), idx[lo:hi]] = 1.0
            sums += onehot.T @ xr  # the rows' sum per cluster
        return idx, dist, sums

    assignment = None
    for _ in range(max_iter):
        new, dist, sums = assign(centers)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        counts = np.bincount(assignment, minlength=k).astype(np.float64)
        for j in np.flatnonzero(counts == 0):  # an empty cluster takes the worst-fitting row
            far = int(dist.argmax())
            sums[j], counts[j], dist[far] = x[far], 1.0, -1.0
        centers = sums / counts[:, None]
    assignment = assign(centers)[0]
    # number the clusters by size, largest first (stable: ties keep their order)
    order = np.argsort(-np.bincount(assignment, minlength=k), kind="stable")
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return centers[order], rank[assignment]


def deskew(images, chunk: int = 8192):
    """Images (N, H, W) with their slant removed: row r of image n is shifted by
    alpha_n * (r - cy_n) plus a centring shift, with alpha_n = cov(x, y) / var(y) of the
    image's intensity (its second moments), so the principal axis stands upright and the
    centre of mass moves to the middle column; linear interpolation, zeros from outside.
    float32 result; an empty image (or one with a single non-zero row) is only centred."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"deskew: expected images of shape (N, H, W), got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("deskew: the images hold NaN or infinite values")
    n, h, w = images.shape
    rows = np.arange(h, dtype=np.float64)[:, None]
    cols = np.arange(w, dtype=np.float64)[None, :]
    out = np.empty((n, h, w), dtype=np.float32)
    for lo in range(0, n, chunk):
        img = images[lo:lo + chunk].astype(np.float64)
        total = img.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)
        cy = (img * rows).sum(axis=(1, 2)) / safe
        cx = (img * cols).sum(axis=(1, 2)) / safe
        cy = np.where(total > 0, cy, (h - 1) / 2)
        cx = np.where(total > 0, cx, (w - 1) / 2)
        dy = rows[None] - cy[:, None, None]
        var_y = (img * dy * dy).sum(axis=(1, 2)) / safe
        cov = (img * dy * (cols[None] - cx[:, None, None])).sum(axis=(1, 2)) / safe
        alpha = np.where(var_y > 0, cov / np.where(var_y > 0, var_y, 1.0), 0.0)
        # output column x of row r reads the input at x + alpha (r - cy) + cx - (w - 1) / 2
        src = cols[None] + alpha[:, None, None] * dy + (cx - (w - 1) / 2)[:, None, None]
        left = np.floor(src)
        frac = src - left
        left = left.astype(np.int64)
        picked = np.zeros((2,) + src.shape)
        for k, col in enumerate((left, left + 1)):
            inside = (col >= 0) & (col < w)
            picked[k] = np.where(inside, np.take_along_axis(img, np.clip(col, 0, w - 1), axis=2), 0.0)
        out[lo:lo + chunk] = (1 - frac) * picked[0] + frac * picked[1]
    return out

