"""The DataLoader's fused batch kernel (backends/cuda/batch.cu behind ``Backend.make_batch``):

- on the CPU emulation of the CUDA backend (tests/cuda_emulation.py), bit for bit the xp
  path run with NumPy (gather, RandomCrop / RandomHorizontalFlip on uint8, float32 / 255,
  Normalize) for the same random choices, drawn in the transforms' order;
- a DataLoader on the emulated GPU (fused path) yields, batch for batch, what the CPU one
  (xp path) yields from the same stream, and leaves the stream in the same state;
- the loader's choice of path does not change what a CPU DataLoader yields.

The emulator runs one OS thread per CUDA thread: the images and batches are small.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulation import _configure
from dlx.backends.host_random import NumpyGenerator

import dlx
from dlx._device import Device
from dlx.data import ArrayDataset, Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip
from dlx.data.transforms import apply_all


@pytest.fixture
def gpu(emu):
    """The CUDA backend on the emulator: (backend, kernels module)."""
    return emu


def _images(shape, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    x[:, :, 0, 0], x[:, :, -1, -1] = 255, 0  # both ends of the range
    return x


def _norm(channels):
    """A Normalize with values that round (CIFAR-10's for three channels)."""
    if channels == 3:
        return Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return Normalize(tuple(np.linspace(0.1307, 0.6, channels)), tuple(np.linspace(0.3081, 0.2, channels)))


def _bits(a):
    a = np.ascontiguousarray(a)
    assert a.dtype == np.float32
    return a.view(np.uint32)  # bit for bit: -0.0 is not 0.0


def _xp_path(data, idx, before, after, seed):
    """The DataLoader's xp path with NumPy: (batch, generator state afterwards)."""
    gen = NumpyGenerator(seed)
    x = apply_all(before, np.take(data, idx, axis=0), gen)
    x = x.astype(np.float32)
    x /= 255.0
    return apply_all(after, x, gen), gen.get_state()


def _fused_path(backend, data, idx, crop, flip, norm, seed):
    """make_batch with the random choices drawn as the transforms draw them (crop rows, crop
    columns, then flips): (batch, generator state afterwards)."""
    gen = NumpyGenerator(seed)
    n, (_, _, h, w) = len(idx), data.shape
    size, padding, oy, ox, flips, mean, std = (h, w), (0, 0, 0, 0), None, None, None, None, None
    if crop is not None:
        size, padding = crop.size, crop.padding
        left, top, right, bottom = padding
        oy = gen.integers(0, h + top + bottom - size[0] + 1, (n,))
        ox = gen.integers(0, w + left + right - size[1] + 1, (n,))
    if flip is not None:
        flips = gen.uniform((n,), 0.0, 1.0, "float32") < flip.p
    if norm is not None:
        mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    on = [None if a is None else backend.asarray(a, 0, None) for a in (data, idx, oy, ox, flips, mean, std)]
    out = backend.make_batch(on[0], on[1], size, padding, *on[2:])
    assert tuple(out.shape) == (n, data.shape[1], *size)
    return backend.to_numpy(out), gen.get_state()


CASES = {  # name: (data shape, indices, crop, flip)
    "plain": ((4, 3, 5, 6), [3, 0, 3, 1], None, None),
    "crop-pad4-32x32": ((3, 3, 32, 32), [2, 0], RandomCrop(32, padding=4), None),
    "crop-no-pad": ((5, 3, 7, 9), [4, 1, 0], RandomCrop((4, 6)), None),
    "crop-asymmetric-pad": ((4, 2, 5, 7), [1, 3, 2, 0, 1], RandomCrop((6, 5), padding=(1, 2, 3, 0)), None),
    "flip": ((4, 3, 5, 6), [0, 1, 2, 3, 2, 1], None, RandomHorizontalFlip()),
    "flip-always": ((3, 2, 4, 5), [2, 0], None, RandomHorizontalFlip(1.0)),
    "crop-flip": ((5, 3, 6, 8), [4, 2, 0, 1], RandomCrop((5, 7), padding=2), RandomHorizontalFlip()),
    "grey-tall-b1": ((3, 1, 7, 4), [2], RandomCrop((7, 3), padding=(0, 3)), RandomHorizontalFlip(1.0)),
    "grey-wide": ((2, 1, 3, 8), [1, 0, 1], RandomCrop((4, 5), padding=1), RandomHorizontalFlip(0.3)),
}


@pytest.mark.parametrize("norm", ["none", "per-channel", "one-value"])
@pytest.mark.parametrize("case", CASES)
def test_fused_batch_is_the_xp_path_bit_for_bit(gpu, case, norm):
    backend, _ = gpu
    shape, idx, crop, flip = CASES[case]
    data, idx = _images(shape, seed=len(case)), np.asarray(idx, np.int64)
    normalize = {"none": None, "per-channel": _norm(shape[1]), "one-value": Normalize(0.4733, 0.2516)}[norm]
    before = [t for t in (crop, flip) if t is not None]
    after = [] if normalize is None else [normalize]
    for seed in (0, 1):
        want, want_state = _xp_path(data, idx, before, after, [seed, 5])
        got, state = _fused_path(backend, data, idx, crop, flip, normalize, [seed, 5])
        np.testing.assert_array_equal(_bits(got), _bits(want))
        assert state == want_state  # the same draws, in the same order


def _numpy_batch(data, idx, size, padding, oy, ox, flip, mean, std):
    """What make_batch computes, written plainly with np.pad and slices."""
    left, top, right, bottom = padding
    padded = np.pad(data[idx], ((0, 0), (0, 0), (top, bottom), (left, right)))
    out = np.stack([padded[b, :, oy[b] : oy[b] + size[0], ox[b] : ox[b] + size[1]] for b in range(len(idx))])
    out = np.where(flip[:, None, None, None], out[..., ::-1], out).astype(np.float32)
    out /= np.float32(255)
    if mean is None:
        return out
    return (out - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("mode", ["launcher", "tight"])
def test_fused_batch_every_offset_and_flip(gpu, mode, monkeypatch):
    """Every corner of the padded image, with and without the flip, repeated indices; with
    the launcher's 256-thread blocks and with one-warp blocks of many grid-stride passes."""
    backend, kernels = gpu
    if mode == "tight":
        _configure(monkeypatch, kernels, "tight")
    data = _images((3, 2, 5, 6), seed=3)
    size, padding = (4, 5), (1, 2, 3, 0)  # padded image 7 x 10: oy in 0..3, ox in 0..5
    combos = [(y, x, f) for y in (0, 1, 3) for x in (0, 2, 5) for f in (False, True)]
    oy, ox, flip = (np.asarray(v) for v in zip(*combos))
    oy, ox = oy.astype(np.int64), ox.astype(np.int64)
    idx = np.arange(len(combos), dtype=np.int64) % 3
    mean, std = np.float32([0.25, 0.5]), np.float32([0.3, 0.7])
    put = lambda a: backend.asarray(a, 0, None)  # noqa: E731
    for m, s in ((None, None), (mean, std)):
        args = (oy, ox, flip, m, s)
        got = backend.make_batch(put(data), put(idx), size, padding,
                                 *(None if a is None else put(a) for a in args))  # fmt: skip
        want = _numpy_batch(data, idx, size, padding, *args)
        np.testing.assert_array_equal(_bits(backend.to_numpy(got)), _bits(want))


def test_make_batch_checks_its_arguments(gpu):
    backend, _ = gpu
    put = lambda a: backend.asarray(np.asarray(a), 0, None)  # noqa: E731
    data, idx, off = put(_images((2, 3, 4, 4))), put(np.int64([1, 0])), put(np.int64([0, 1]))
    empty = backend.make_batch(data, put(np.zeros(0, np.int64)), (4, 4), (0, 0, 0, 0))
    assert tuple(empty.shape) == (0, 3, 4, 4) and empty.dtype == np.float32  # the loader's question
    with pytest.raises(ValueError, match="data must be a C-contiguous uint8"):
        backend.make_batch(put(np.zeros((2, 3, 4, 4), np.float32)), idx, (4, 4), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="idx must be a C-contiguous int64"):
        backend.make_batch(data, put(np.int32([1, 0])), (4, 4), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="CuPy array"):
        backend.make_batch(data, np.int64([1, 0]), (4, 4), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="in pairs"):
        backend.make_batch(data, idx, (4, 4), (1, 1, 1, 1), off, None)
    with pytest.raises(ValueError, match=r"oy must .* shape \(2\)"):
        backend.make_batch(data, idx, (4, 4), (1, 1, 1, 1), put(np.int64([0])), off)
    with pytest.raises(ValueError, match="flip must .* bool"):
        backend.make_batch(data, idx, (4, 4), (0, 0, 0, 0), flip=put(np.uint8([0, 1])))
    with pytest.raises(ValueError, match="2 mean/std values for 3 channels"):
        backend.make_batch(data, idx, (4, 4), (0, 0, 0, 0), mean=put(np.float32([0, 1])),
                           std=put(np.float32([1, 1])))  # fmt: skip
    with pytest.raises(ValueError, match="does not fit"):
        backend.make_batch(data, idx, (5, 4), (0, 0, 0, 0))


def test_other_backends_have_no_fused_path():
    cpu = dlx.device("cpu")
    x = cpu.backend.asarray(_images((2, 1, 3, 3)), None, None)
    assert cpu.backend.make_batch(x, np.zeros(0, np.int64), (3, 3), (0, 0, 0, 0)) is None


# ---- the DataLoader -----------------------------------------------------------------------------

PIPELINES = {
    "none": None,
    "crop": RandomCrop(5, padding=2),
    "flip": RandomHorizontalFlip(),
    "crop-flip": Compose([RandomCrop((5, 4), padding=(1, 2)), RandomHorizontalFlip(0.3)]),
    "crop-flip-normalize": Compose([RandomCrop(6, padding=1), RandomHorizontalFlip(), _norm(3)]),
    "flip-normalize": Compose([RandomHorizontalFlip(), Normalize(0.5, 0.25)]),
    "normalize": _norm(3),
}


def _dataset(n=7, shape=(6, 5, 3)):
    """uint8 (N, H, W, C) images, as torchvision's .data: the loader makes them (N, C, H, W)."""
    rng = np.random.default_rng(11)
    return ArrayDataset(rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n))


def _run(loader, epochs=2):
    """Every batch of ``epochs`` epochs as NumPy, and the state of each epoch's stream after it."""
    gens, out = [], []
    make = loader._generator

    def keep(epoch):
        gens.append(make(epoch))
        return gens[-1]

    loader._generator = keep
    for _ in range(epochs):
        out += [(dlx.to_numpy(x), dlx.to_numpy(y)) for x, y in loader]
    return out, [g.get_state() for g in gens]


def _counting(monkeypatch, backend, fn):
    calls = []

    def make_batch(*args, **kwargs):
        calls.append(args[1].shape[0])
        return fn(*args, **kwargs)

    monkeypatch.setattr(backend, "make_batch", make_batch)
    return calls


def _assert_same(got, want):
    (batches, states), (want_batches, want_states) = got, want
    assert len(batches) == len(want_batches)
    for (x, y), (wx, wy) in zip(batches, want_batches):
        np.testing.assert_array_equal(_bits(x), _bits(wx))
        np.testing.assert_array_equal(y, wy)
    assert states == want_states


@pytest.mark.parametrize("shard", [None, (1, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_loader_on_the_emulated_gpu_yields_the_cpu_batches(gpu, monkeypatch, pipeline, shuffle, shard):
    """The fused path (emulated GPU) against the xp path (CPU), the GPU's stream made the
    CPU's PCG64 so that both draw the same numbers: same batches, same stream afterwards."""
    import cupy  # the emulator's stand-in

    backend, _ = gpu
    monkeypatch.setattr(backend, "generator", lambda index, seed: NumpyGenerator(seed, place=cupy.asarray))
    monkeypatch.setattr(backend, "host_generator", True)
    calls = _counting(monkeypatch, backend, backend.make_batch)
    device = Device("cuda", 0)
    device._backend = backend
    kw = dict(batch_size=3, shuffle=shuffle, seed=4, transform=PIPELINES[pipeline], shard=shard)
    ds = _dataset()
    loader = DataLoader(ds, device=device, **kw)
    assert loader.resident
    got = _run(loader)
    want = _run(DataLoader(ds, device="cpu", **kw))
    _assert_same(got, want)
    assert len(calls) == 1 + 2 * len(loader) and calls[0] == 0  # the question, then every batch


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_cpu_loader_yields_the_same_whichever_path(monkeypatch, pipeline):
    """A CPU backend given a fused make_batch (NumPy, _numpy_batch) takes the fused path
    and yields what the plain CPU loader yields, with the same stream afterwards."""
    ds = _dataset(n=8)
    kw = dict(batch_size=3, shuffle=True, seed=2, device="cpu", transform=PIPELINES[pipeline])
    want = _run(DataLoader(ds, **kw))

    def numpy_make_batch(data, idx, size, padding, oy=None, ox=None, flip=None, mean=None, std=None):
        n = len(idx)
        if n == 0:  # the loader's question
            return np.zeros((0, data.shape[1], *size), np.float32)
        zeros = np.zeros(n, np.int64)
        oy, ox = (zeros if a is None else a for a in (oy, ox))
        flip = np.zeros(n, bool) if flip is None else flip
        return _numpy_batch(data, idx, size, padding, oy, ox, flip, mean, std)

    calls = _counting(monkeypatch, dlx.device("cpu").backend, numpy_make_batch)
    _assert_same(_run(DataLoader(ds, **kw)), want)
    assert len(calls) == 1 + 2 * 3


@pytest.mark.parametrize(
    "transform",
    [
        Compose([RandomHorizontalFlip(), RandomCrop(5, padding=1)]),  # flip first: not fused
        Compose([RandomCrop(5, padding=1), _norm(3), Normalize(0.1, 2.0)]),
        Compose([RandomCrop(5, padding=1), lambda t: t * 2]),
        Compose([Compose([RandomCrop(5, padding=1)])]),
        Normalize((0.5, 0.5), (1.0, 1.0)),  # 2 values for 3 channels: the xp path's error
    ],
)
def test_loader_keeps_the_xp_path_for_other_pipelines(monkeypatch, transform):
    calls = _counting(monkeypatch, dlx.device("cpu").backend, lambda *a, **k: pytest.fail("fused"))
    loader = DataLoader(_dataset(), batch_size=4, shuffle=True, seed=1, device="cpu", transform=transform)
    if isinstance(transform, Normalize):
        with pytest.raises(ValueError, match="Normalize: 2 channel values"):
            list(loader)
    else:
        assert [tuple(x.shape) for x, _ in loader] == [(4, 3, 5, 5), (3, 3, 5, 5)]
    assert calls == []


def test_loader_keeps_the_xp_path_for_float_or_streamed_data(monkeypatch):
    calls = _counting(monkeypatch, dlx.device("cpu").backend, lambda *a, **k: pytest.fail("fused"))
    ds = _dataset()
    floats = ArrayDataset(ds.data.astype(np.float32) / 255, ds.targets)
    for loader in (DataLoader(floats, 4, device="cpu"), DataLoader(ds, 4, device="cpu", resident=False)):
        assert len(list(loader)) == 2
    assert calls == []


def test_fused_crop_too_large_raises_as_the_xp_path(gpu):
    backend, _ = gpu
    device = Device("cuda", 0)
    device._backend = backend
    loader = DataLoader(_dataset(), batch_size=4, device=device, transform=RandomCrop(9, padding=1))
    with pytest.raises(ValueError, match=r"RandomCrop: crop \(9, 9\) is larger than the padded image"):
        next(iter(loader))
