"""Batch transforms that run on the device: ``Normalize``, ``RandomCrop``,
``RandomHorizontalFlip`` and ``Compose``.

Each takes a batch (N, C, H, W) and returns a new one on the same device, drawing one
random choice per image (not one per batch), through Array-API calls of the batch's own
namespace only, so the same code runs on NumPy, array-api-strict and CuPy. Random numbers
come from ``generator`` (the DataLoader passes its own) or the device's dlx generator.
"""

from __future__ import annotations

from numbers import Real

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "Transform"]


def _namespace(x):
    from dlx._device import get_namespace

    return get_namespace(x)


def _generator(x, generator):
    if generator is not None:
        return generator
    from dlx._device import device_of
    from dlx._random import generator as device_generator

    return device_generator(device_of(x))


def _check_images(x, name):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(
            f"{name}: expected a batch of images (N, C, H, W), got shape {getattr(x, 'shape', x)}"
        )


class Transform:
    """A batch transform. ``geometric`` ones only move pixels (exact on uint8 and
    commuting with scaling), so the DataLoader may run them before converting to float."""

    geometric = False

    def __call__(self, x, generator=None):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def apply(transform, x, generator=None):
    """``transform(x)``, passing ``generator`` to dlx transforms (plain callables get x only)."""
    if isinstance(transform, Transform):
        return transform(x, generator=generator)
    return transform(x)


def apply_all(steps, x, generator=None):
    """Apply ``steps`` in order; a RandomCrop directly followed by a RandomHorizontalFlip
    runs as one gather (identical result)."""
    i = 0
    while i < len(steps):
        t = steps[i]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if type(t) is RandomCrop and type(nxt) is RandomHorizontalFlip:
            x = t._crop(x, _generator(x, generator), flip_p=nxt.p)
            i += 2
            continue
        x = apply(t, x, generator)
        i += 1
    return x


class Compose(Transform):
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def geometric(self):
        return all(getattr(t, "geometric", False) for t in self.transforms)

    def __call__(self, x, generator=None):
        return apply_all(self.transforms, x, generator)

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Normalize(Transform):
    """``(x - mean) / std`` per channel, in the batch's float dtype (as torchvision's)."""

    def __init__(self, mean, std):
        self.mean = _floats(mean, "mean")
        self.std = _floats(std, "std")
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean has {len(self.mean)} values, std {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: std {self.std} contains a zero; it divides the batch")
        self._cache = {}

    def __call__(self, x, generator=None):
        xp = _namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(f"Normalize: expects a floating batch in [0, 1], got dtype {x.dtype}")
        if x.ndim < 2 or len(self.mean) not in (1, x.shape[1]):
            raise ValueError(
                f"Normalize: {len(self.mean)} channel values for a batch of shape {x.shape} "
                f"(channels on axis 1)"
            )
        key = (str(x.device), str(x.dtype), x.ndim)
        if key not in self._cache:  # built once per device: no host-to-device copy per batch
            shape = (1, len(self.mean)) + (1,) * (x.ndim - 2)
            mean = xp.reshape(xp.asarray(self.mean, dtype=x.dtype, device=x.device), shape)
            std = xp.reshape(xp.asarray(self.std, dtype=x.dtype, device=x.device), shape)
            self._cache[key] = (mean, std)
        mean, std = self._cache[key]
        return (x - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


def _floats(v, name):
    vals = (v,) if isinstance(v, Real) else tuple(v)
    if not vals or not all(isinstance(a, Real) for a in vals):
        raise ValueError(f"Normalize: {name} must be a number or a sequence of numbers, got {v!r}")
    return tuple(float(a) for a in vals)


def _pair(v, name):
    if isinstance(v, int):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(a, int) and a > 0 for a in v):
        raise ValueError(f"RandomCrop: {name} must be a positive int or (h, w), got {v!r}")
    return v


class RandomCrop(Transform):
    """Pad with zeros, then cut a ``size`` window at a random offset drawn per image.

    ``padding``: int (all sides), (left/right, top/bottom) or (left, top, right, bottom),
    as in torchvision. Put it before ``Normalize`` so the padding is black, as there.
    """

    geometric = True

    def __init__(self, size, padding=None):
        self.size = _pair(size, "size")
        self.padding = _padding(padding)

    def __call__(self, x, generator=None):
        return self._crop(x, _generator(x, generator))

    def _crop(self, x, gen, flip_p=None):
        """The crop; with ``flip_p``, also RandomHorizontalFlip(flip_p) in the same gather
        (same random draws in the same order, same result, one pass less)."""
        _check_images(x, "RandomCrop")
        xp = _namespace(x)
        n, c, h, w = x.shape
        left, top, _, _ = self.padding
        hp, wp = self._padded(h, w)
        sh, sw = self.size
        # Columns first, then rows, each gathered as whole rows of a 2-D array: the indices
        # have N*SW and N*C*SH entries, not one per pixel (a per-pixel int64 index is 3 MB
        # for 128 CIFAR images, and in a training loop its page faults cost more than the
        # crop). The padded batch is laid out (N, WP, C, HP): one image column per row.
        dev, i64 = x.device, xp.int64
        zt = xp.zeros((n, wp, c, hp), dtype=x.dtype, device=dev)
        zt[:, left : left + w, :, top : top + h] = xp.permute_dims(x, (0, 3, 1, 2))
        oy, ox = self._offsets(gen, n, h, w)
        j = xp.reshape(xp.arange(sw, dtype=i64, device=dev), (1, sw))
        if flip_p is not None:  # flipped image n reads its window right to left
            flip = _flips(gen, n, flip_p)
            j = xp.where(xp.reshape(flip, (n, 1)), (sw - 1) - j, j)
        first = xp.reshape(xp.arange(n, dtype=i64, device=dev) * wp + ox, (n, 1))
        cols = xp.take(xp.reshape(zt, (n * wp, c * hp)), xp.reshape(first + j, (-1,)), axis=0)
        # (N*SW, C*HP) -> rows of (N, C, HP) with SW columns: one transposing copy.
        cols = xp.reshape(xp.permute_dims(xp.reshape(cols, (n, sw, c, hp)), (0, 2, 3, 1)),
                          (n * c * hp, sw))  # fmt: skip
        rows = (
            xp.reshape(xp.arange(n * c, dtype=i64, device=dev), (n, c, 1)) * hp
            + xp.reshape(oy, (n, 1, 1))
            + xp.reshape(xp.arange(sh, dtype=i64, device=dev), (1, 1, sh))
        )
        out = xp.take(cols, xp.reshape(rows, (-1,)), axis=0)  # (N*C*SH, SW)
        return xp.reshape(out, (n, c, sh, sw))

    def _padded(self, h, w):
        """(HP, WP): the padded image's shape; ValueError when the crop does not fit it."""
        left, top, right, bottom = self.padding
        hp, wp = h + top + bottom, w + left + right
        if self.size[0] > hp or self.size[1] > wp:
            raise ValueError(f"RandomCrop: crop {self.size} is larger than the padded image ({hp}, {wp})")
        return hp, wp

    def _offsets(self, gen, n, h, w):
        """(oy, ox), int64 (n,): each window's top-left corner in the padded image, drawn
        rows first (the draws of the crop; the DataLoader's fused path makes the same)."""
        hp, wp = self._padded(h, w)
        return gen.integers(0, hp - self.size[0] + 1, (n,)), gen.integers(0, wp - self.size[1] + 1, (n,))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


def _padding(p):
    if p is None:
        return (0, 0, 0, 0)
    if isinstance(p, int):
        p = (p,)
    p = tuple(p)
    if not all(isinstance(a, int) and a >= 0 for a in p) or len(p) not in (1, 2, 4):
        raise ValueError(
            f"RandomCrop: padding must be an int, (left/right, top/bottom) or "
            f"(left, top, right, bottom) of non-negative ints, got {p!r}"
        )
    if len(p) == 1:
        return p * 4
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    return p


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``, drawn per image."""

    geometric = True

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, generator=None):
        _check_images(x, "RandomHorizontalFlip")
        xp = _namespace(x)
        n = x.shape[0]
        flip = _flips(_generator(x, generator), n, self.p)
        return xp.where(xp.reshape(flip, (n, 1, 1, 1)), xp.flip(x, axis=3), x)


def _flips(gen, n, p):
    """Which of ``n`` images a flip with probability ``p`` mirrors: bool (n,), one draw each."""
    return gen.uniform((n,), 0.0, 1.0, "float32") < p
