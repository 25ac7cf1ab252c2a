"""``DataLoader``: batches of a data set on a device, shuffled per epoch, with batch
transforms applied on the device.

The whole uint8 set is kept on the device when it fits (see ``resident``), so a batch
is one gather there, one conversion to float32 in [0, 1] and the transforms: no host work
and no host-to-device copy per batch. Where the backend has a fused path
(``Backend.make_batch``: one CUDA kernel) and the transforms are a RandomCrop and/or a
RandomHorizontalFlip, then at most one Normalize, all of that is a single launch, with the
same values and the same random draws.
"""

from __future__ import annotations

import math

import numpy as np

from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, _flips, apply_all

__all__ = ["DataLoader"]


def integer_labels(values, where: str, error=ValueError) -> np.ndarray:
    """``values`` as int64 class labels, cast exactly: integer arrays pass, float arrays pass
    only if every value is a whole number (3.0 -> 3); 2.9, NaN, inf and non-numbers raise
    ``error`` naming ``where``, instead of being truncated (2.9 -> 2) as astype would."""
    y = np.asarray(values)
    if y.dtype.kind in "biu":
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) >= 2.0**63)
        if not bad.any():
            return y.astype(np.int64)
        i = int(np.flatnonzero(bad.ravel())[0])
        raise error(f"{where}: label {y.ravel()[i]!r} (index {i}) is not a whole number; class "
                    f"labels must be integers 0..K-1: fix the labels, do not truncate them")
    raise error(f"{where}: labels must be integers 0..K-1, got {y.dtype} values")


def _host_arrays(dataset):
    """(data, targets) NumPy arrays of a data set, images laid out (N, C, H, W)."""
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is None or targets is None:
        n = len(dataset)
        if n == 0:
            raise ValueError("DataLoader: the data set is empty")
        samples = [dataset[i] for i in range(n)]
        data = np.stack([np.asarray(s[0]) for s in samples])
        targets = np.asarray([s[1] for s in samples])
    data, targets = np.asarray(data), np.asarray(targets)
    if targets.ndim != 1 or len(targets) != len(data):
        raise ValueError(
            f"DataLoader: targets of shape {targets.shape} do not match data of shape {data.shape}"
        )
    targets = integer_labels(targets, "DataLoader: the data set's targets")
    if data.dtype != np.uint8 and not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"DataLoader: data must be uint8 or floating, got {data.dtype}")
    if data.dtype != np.uint8:
        data = data.astype(np.float32, copy=False)  # float32 once, not per batch
    if data.ndim == 3:  # (N, H, W) grey images
        data = data[:, None, :, :]
    elif data.ndim == 4 and data.shape[-1] in (1, 3, 4) and data.shape[1] not in (1, 3, 4):
        data = data.transpose(0, 3, 1, 2)  # (N, H, W, C), as torchvision's .data
    return np.ascontiguousarray(data), targets.astype(np.int64)


def _split_transform(transform):
    """(before, after): the leading pixel-moving transforms, run on the uint8 batch before
    scaling (identical results, a quarter of the bytes), and the rest, run on float32."""
    if transform is None:
        return [], []
    steps = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    k = 0
    while k < len(steps) and getattr(steps[k], "geometric", False):
        k += 1
    return steps[:k], steps[k:]


def _fusable(before, after, channels):
    """(crop, flip, normalize) of a pipeline the backend's fused ``make_batch`` reproduces
    (RandomCrop, RandomHorizontalFlip, both in that order or neither, then at most one
    Normalize; each None when absent), or None for any other pipeline. Exact types: a
    subclass may compute something else."""
    kinds = [type(t) for t in before]
    if kinds not in ([], [RandomCrop], [RandomHorizontalFlip], [RandomCrop, RandomHorizontalFlip]):
        return None
    if len(after) > 1 or (after and type(after[0]) is not Normalize):
        return None
    norm = after[0] if after else None
    if norm is not None and len(norm.mean) not in (1, channels):
        return None  # the xp path raises Normalize's error
    crop = before[0] if kinds[:1] == [RandomCrop] else None
    flip = before[-1] if kinds[-1:] == [RandomHorizontalFlip] else None
    return crop, flip, norm


def _check_shard(shard, seed, shuffle) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if (not isinstance(shard, (tuple, list)) or len(shard) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"DataLoader: shard must be (rank, world) with 0 <= rank < world, "
                         f"got {shard!r}")
    if shard[1] > 1 and shuffle and seed is None:
        raise ValueError("DataLoader: a sharded loader that shuffles needs a seed (every rank "
                         "must draw the same order); pass seed=")
    return int(shard[0]), int(shard[1])


class DataLoader:
    """Iterate ``(x, y)`` batches on ``device``: x float32 (N, C, H, W) in [0, 1] (uint8
    data divided by 255; float data as it is, in float32), y int64 (N,).

    - ``shuffle``: a new order every epoch (every ``iter()``); ``seed`` makes the order and
      the transforms' random choices reproducible: epoch ``e`` uses a generator seeded
      from ``(seed, e)`` alone, so ``set_epoch`` / ``load_state_dict`` resume exactly. With
      a seed, the order is the same on every device (drawn on the host when the device's
      own stream is another algorithm, as on CUDA), so a run on the GPU sees its data in
      the CPU run's order; the transforms' random choices come from the device's stream.
      With ``seed=None`` the device's dlx generator is used (``dlx.manual_seed`` and
      ``dlx.get_rng_state`` cover it).
    - ``transform``: a batch transform (see ``dlx.data.transforms``) run on the device.
    - ``resident``: keep the whole uint8 set on the device (True), or copy each batch
      from host memory (False). None: on the CPU and strict devices always (the set is in
      host memory already), on a GPU when it is at most the backend's
      ``max_resident_bytes`` (2 GiB on CUDA; MNIST train is 47 MB, CIFAR-10 train 154 MB).
    - ``shard=(rank, world)``: data parallelism (``dlx.distributed``). Every rank draws the
      same seeded order and rank r takes its part of each global batch of
      ``world * batch_size`` images: N ranks with batch B see exactly the batches of one
      process with batch N*B. A last global batch of M < N*B images (``drop_last=False``)
      is split as evenly as contiguous parts allow; ``shard_weight(b)`` is this rank's
      share of batch b, the weight of its gradient. The transforms' random choices come
      from a stream of the seed, the epoch and the rank.
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        device=None,
        transform=None,
        resident: bool | None = None,
        shard: tuple[int, int] | None = None,
    ):
        from dlx._device import device as get_device

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(f"DataLoader: seed must be a non-negative int or None, got {seed!r}")
        self.rank, self.world = _check_shard(shard, seed, shuffle)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.device = get_device(device)
        self.transform = transform
        self._before, self._after = _split_transform(transform)
        self.epoch = 0

        data, targets = _host_arrays(dataset)
        self.num_samples = len(data)
        if resident is None:
            resident = self.device.backend.keeps_resident(data.nbytes)
        self.resident = bool(resident)
        self._host = None if self.resident else data
        self._x = self._put(data) if self.resident else None
        self._y = self._put(targets)
        self._uint8 = data.dtype == np.uint8
        self._all = None  # int64 0..N-1 on the device: the images of unshuffled fused batches
        self._fused = self._fused_plan(data.shape) if self.resident and self._uint8 else None

    def _put(self, host_array):
        # Host NumPy data straight to the backend (no device lookup of the NumPy array).
        dev = self.device
        return dev.backend.asarray(host_array, dev.index, None)

    def _fused_plan(self, shape):
        """(crop, flip, mean, std) when each batch is made by the backend's fused kernel
        (``Backend.make_batch``, asked once with no image whether it has one) and the
        transforms are ones it reproduces bit for bit; else None (the xp path)."""
        steps = _fusable(self._before, self._after, shape[1])
        if steps is None:
            return None
        no_images = self._put(np.zeros(0, np.int64))
        if self.device.backend.make_batch(self._x, no_images, tuple(shape[2:]), (0, 0, 0, 0)) is None:
            return None
        crop, flip, norm = steps
        if norm is None:
            return crop, flip, None, None
        # float32 on the device once, rounded as Normalize rounds them (asarray, float32)
        mean, std = (self._put(np.asarray(v, np.float32)) for v in (norm.mean, norm.std))
        return crop, flip, mean, std

    def _fused_batch(self, lo, hi, idx, gen):
        """Batch [lo, hi) (images ``idx``, or lo..hi-1 when None) in one kernel; the random
        choices are drawn here as the transforms draw them: crop rows, crop columns, flips."""
        crop, flip, mean, std = self._fused
        _, _, h, w = self._x.shape
        if idx is None:
            if self._all is None:
                self._all = self._put(np.arange(self.num_samples, dtype=np.int64))
            idx = self._all[lo:hi]
        size, padding, oy, ox, flips = (h, w), (0, 0, 0, 0), None, None, None
        if crop is not None:
            oy, ox = crop._offsets(gen, hi - lo, h, w)
            size, padding = crop.size, crop.padding
        if flip is not None:
            flips = _flips(gen, hi - lo, flip.p)
        return self.device.backend.make_batch(self._x, idx, size, padding, oy, ox, flips, mean, std)

    def __len__(self):
        global_batch = self.batch_size * self.world
        if self.drop_last:
            return self.num_samples // global_batch
        return math.ceil(self.num_samples / global_batch)

    def _part(self, b: int) -> tuple[int, int]:
        """[lo, hi) of this rank's part of global batch ``b`` in the epoch's order."""
        g = self.batch_size * self.world
        start, m = b * g, min(g, self.num_samples - b * g)
        if m == g:
            return start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size
        q, extra = divmod(m, self.world)  # the tail: sizes differ by at most one
        lo = start + self.rank * q + min(self.rank, extra)
        return lo, lo + q + (self.rank < extra)

    def shard_weight(self, b: int) -> float:
        """This rank's share of global batch ``b`` (1 / world for a full batch)."""
        lo, hi = self._part(b)
        g = self.batch_size * self.world
        return (hi - lo) / min(g, self.num_samples - b * g)

    # epochs and random state --------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` (its order and random choices)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])

    def _generator(self, epoch: int):
        if self.world > 1 and self.seed is not None:  # the order comes from the host stream
            return self.device.generator([self.seed, 2, epoch, self.rank])  # (_order); choices per rank
        if self.seed is None:
            from dlx._random import generator

            return generator(self.device)
        # Stream 2 and the epoch: never the same stream as dlx's own (seed, 0) and (seed, 1).
        return self.device.generator([self.seed, 2, epoch])

    # batches --------------------------------------------------------------------
    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self._batches(self._generator(epoch), epoch)

    def _order(self, gen, epoch: int):
        """The epoch's permutation, on the device. The CPU and strict devices draw it from
        their host stream ``gen``; another device's stream (CUDA's Philox) would give
        another order, so there the same numbers are drawn from a host stream with the
        same seed (one small copy per epoch)."""
        if self.world == 1 and (self.seed is None or self.device.backend.host_generator):
            return gen.permutation(self.num_samples)
        from dlx._device import host_generator

        return self._put(host_generator([self.seed, 2, epoch]).permutation(self.num_samples))

    def _batches(self, gen, epoch: int):
        xp = self.device.xp
        n, bs = self.num_samples, self.batch_size
        order = self._order(gen, epoch) if self.shuffle else None
        host_order = None
        if order is not None and not self.resident:
            from dlx._device import to_numpy

            host_order = to_numpy(order)  # one copy per epoch, to gather on the host
        for b in range(len(self)):
            lo, hi = self._part(b) if self.world > 1 else (b * bs, min((b + 1) * bs, n))
            idx = None if order is None else order[lo:hi]
            yb = self._y[lo:hi] if idx is None else xp.take(self._y, idx, axis=0)
            if self._fused is not None:  # gather, transforms and scaling in one kernel
                yield self._fused_batch(lo, hi, idx, gen), yb
                continue
            if idx is None:
                xb = self._x[lo:hi, ...] if self.resident else self._put(self._host[lo:hi])
            elif self.resident:
                xb = xp.take(self._x, idx, axis=0)
            else:
                xb = self._put(np.take(self._host, host_order[lo:hi], axis=0))
            xb = apply_all(self._before, xb, gen)
            xb = xp.astype(xb, xp.float32)  # a new array: the resident set is never touched
            if self._uint8:
                xb /= 255.0  # divide, as torchvision's ToTensor: x * (1/255) rounds differently
            xb = apply_all(self._after, xb, gen)
            yield xb, yb

    def __repr__(self):
        return (
            f"DataLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
            f"device='{self.device}', resident={self.resident}, batches={len(self)}"
            + (f", shard=({self.rank}, {self.world})" if self.world > 1 else "") + ")"
        )
