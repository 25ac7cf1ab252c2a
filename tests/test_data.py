"""dlx.data: readers of the official MNIST / CIFAR-10 files, the restricted unpickler,
the DataLoader and the batch transforms. Small files in the official formats are made in
tmp_path; the downloader has its own file (test_download.py)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from dlx.backends.host_random import NumpyGenerator

import dlx
from dlx.data import (
    CIFAR10,
    MNIST,
    ArrayDataset,
    Compose,
    DataFormatError,
    DataLoader,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    UnsafePickleError,
    default_root,
    extract_tar,
    read_idx,
    restricted_loads,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def on(dev, a):
    """Host array -> device array."""
    return dev.backend.asarray(np.asarray(a), dev.index, None)


# ------------------------------------------------------------------ official formats


def idx_bytes(a: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}[a.dtype]
    return struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(folder: Path, n_train=6, n_test=4, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for name, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            raw = idx_bytes(a)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[prefix] = (x, y)
    return out


class Py2Pickle:
    """Protocol-2 pickles with Python 2 'str' opcodes, as the CIFAR-10 batches are written
    (the layout of ../shared/data/cifar10/make_cifar10.py)."""

    def __init__(self):
        self.b = bytearray(b"\x80\x02")

    def str_(self, s):
        s = s.encode() if isinstance(s, str) else s
        self.b += (b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<I", len(s))) + s

    def int_(self, v):
        self.b += b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    def list_(self, items, put):
        self.b += b"]("
        for v in items:
            put(v)
        self.b += b"e"

    def ndarray_u8(self, a):
        self.b += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
        self.int_(1)
        for d in a.shape:
            self.int_(d)
        self.b += (
            b"\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
            b"J\xff\xff\xff\xffK\x00tb\x89"
        )
        self.str_(a.tobytes())
        self.b += b"tb"

    def dict_(self, pairs):
        self.b += b"}("
        for k, put in pairs:
            self.str_(k)
            put()
        self.b += b"u"

    def done(self):
        return bytes(self.b + b".")


def py_batch(x, y):
    p = Py2Pickle()
    p.dict_([
        ("batch_label", lambda: p.str_("training batch")),
        ("labels", lambda: p.list_([int(v) for v in y], p.int_)),
        ("data", lambda: p.ndarray_u8(x)),
        ("filenames", lambda: p.list_([f"img_{i}.png" for i in range(len(y))], p.str_)),
    ])  # fmt: skip
    return p.done()


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def py_meta():
    p = Py2Pickle()
    p.dict_([("num_cases_per_batch", lambda: p.int_(10000)),
             ("label_names", lambda: p.list_(CLASSES, p.str_)),
             ("num_vis", lambda: p.int_(3072))])  # fmt: skip
    return p.done()


def write_tar(path: Path, files):
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def make_cifar(n_per_batch=3, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    train = [(rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
              rng.integers(0, 10, n_per_batch)) for _ in range(5)]  # fmt: skip
    test = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, 10, n_test))
    return train, test


def cifar_py_files(train, test):
    files = [("cifar-10-batches-py/batches.meta", py_meta())]
    files += [(f"cifar-10-batches-py/data_batch_{i + 1}", py_batch(x, y))
              for i, (x, y) in enumerate(train)]  # fmt: skip
    files += [("cifar-10-batches-py/test_batch", py_batch(*test)),
              ("cifar-10-batches-py/readme.html", b"<html></html>\n")]  # fmt: skip
    return files


def cifar_bin_files(train, test):
    def recs(x, y):
        return np.concatenate([np.asarray(y, np.uint8)[:, None], x], axis=1).tobytes()

    files = [("cifar-10-batches-bin/batches.meta.txt", ("\n".join(CLASSES) + "\n\n").encode())]
    files += [(f"cifar-10-batches-bin/data_batch_{i + 1}.bin", recs(x, y))
              for i, (x, y) in enumerate(train)]  # fmt: skip
    files += [("cifar-10-batches-bin/test_batch.bin", recs(*test))]
    return files


# ------------------------------------------------------------------------ readers


def test_read_idx_gz_raw_and_wider_dtypes(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    (tmp_path / "a").write_bytes(idx_bytes(a))
    b = np.arange(-3, 3, dtype=">i4")
    (tmp_path / "b").write_bytes(idx_bytes(b))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    got = read_idx(tmp_path / "b")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, np.arange(-3, 3))


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    a = np.zeros((4, 28, 28), np.uint8)
    (tmp_path / "short").write_bytes(idx_bytes(a)[:-5])
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataFormatError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(tmp_path / "png")


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_the_official_layout(tmp_path, compress):
    ref = write_mnist(tmp_path / "mnist", compress=compress)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = MNIST(tmp_path, train=train)
        x, y = ref[prefix]
        assert ds.data.dtype == np.uint8 and ds.data.shape == x.shape
        assert ds.targets.dtype == np.int64
        np.testing.assert_array_equal(ds.data, x)
        np.testing.assert_array_equal(ds.targets, y)
        assert len(ds) == len(x) and ds[1][1] == int(y[1])
        assert len(ds.classes) == 10


@pytest.mark.parametrize("bad", [2.9, float("nan")])
def test_float_labels_are_refused_not_truncated(tmp_path, bad):
    write_mnist(tmp_path / "mnist", compress=False)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    y = np.array([1, 2, bad, 4, 5, 6], ">f4")
    labels.write_bytes(idx_bytes(y))
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte: label .* \(index 2\) is "
                                              r"not a whole number"):
        MNIST(tmp_path)
    with pytest.raises(ValueError, match=r"ArrayDataset targets: label .* \(index 2\)"):
        ArrayDataset(np.zeros((6, 2, 2)), y.astype(np.float64))
    with pytest.raises(ValueError, match="labels must be integers 0..K-1, got <U1"):
        ArrayDataset(np.zeros((2, 2, 2)), np.array(["a", "b"]))
    labels.write_bytes(idx_bytes(np.array([1, 2, 3, 4, 5, 6], ">f4")))  # whole numbers: exact
    np.testing.assert_array_equal(MNIST(tmp_path).targets, [1, 2, 3, 4, 5, 6])

    class Floats:  # a map-style data set without .targets: the loader checks its labels too
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((2, 2), np.uint8), (1.0, bad)[i]

    with pytest.raises(ValueError, match="DataLoader: the data set's targets: label"):
        DataLoader(Floats(), batch_size=2)


def test_missing_data_names_folder_files_and_fixes(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        MNIST(tmp_path, train=False)
    msg = str(e.value)
    assert str(tmp_path / "mnist") in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert "download=True" in msg and "DLX_DATA_DIR" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        CIFAR10(tmp_path)


def test_default_root_follows_dlx_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DLX_DATA_DIR", str(tmp_path))
    assert default_root() == tmp_path
    write_mnist(tmp_path / "mnist")
    assert len(MNIST(train=False)) == 4
    monkeypatch.delenv("DLX_DATA_DIR")
    assert default_root() == Path.home() / ".cache" / "dlx"


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_test_split():
    ds = MNIST(SHARED_MNIST.parent, train=False)
    assert ds.data.shape == (10000, 28, 28) and ds.data.dtype == np.uint8
    assert np.bincount(ds.targets).tolist()[:3] == [980, 1135, 1032]


def _check_cifar(ds, train, test, is_train=True):
    xs, ys = (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]))
    if not is_train:
        xs, ys = test
    assert ds.data.shape == (len(xs), 32, 32, 3) and ds.data.dtype == np.uint8
    assert ds.targets.dtype == np.int64
    np.testing.assert_array_equal(ds.targets, ys)
    # R, G, B planes of 32x32, row-major: pixel (h, w) of channel c is byte c*1024 + h*32 + w.
    i, h, w, c = 1, 5, 7, 2
    assert ds.data[i, h, w, c] == xs[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(ds.data.transpose(0, 3, 1, 2).reshape(len(xs), -1), xs)
    assert ds.classes == CLASSES


def test_cifar10_python_archive_folder_and_binary_versions(tmp_path):
    train, test = make_cifar()
    folder = tmp_path / "cifar10"
    folder.mkdir()
    write_tar(folder / "cifar-10-python.tar.gz", cifar_py_files(train, test))
    write_tar(folder / "cifar-10-binary.tar.gz", cifar_bin_files(train, test))

    ds = CIFAR10(tmp_path)  # the python archive, read in place
    assert ds.source.name == "cifar-10-python.tar.gz"
    _check_cifar(ds, train, test)
    _check_cifar(CIFAR10(tmp_path, train=False), train, test, is_train=False)
    for fmt in ("binary",):
        _check_cifar(CIFAR10(tmp_path, format=fmt), train, test)
        _check_cifar(CIFAR10(tmp_path, train=False, format=fmt), train, test, is_train=False)

    extract_tar(folder / "cifar-10-python.tar.gz", folder)
    extract_tar(folder / "cifar-10-binary.tar.gz", folder)
    (folder / "cifar-10-python.tar.gz").unlink()
    (folder / "cifar-10-binary.tar.gz").unlink()
    ds = CIFAR10(tmp_path)
    assert ds.source.name == "cifar-10-batches-py"
    _check_cifar(ds, train, test)
    ds = CIFAR10(tmp_path, train=False, format="binary")
    assert ds.source.name == "cifar-10-batches-bin"
    _check_cifar(ds, train, test, is_train=False)


def test_cifar10_rejects_a_truncated_binary_batch(tmp_path):
    train, test = make_cifar()
    files = cifar_bin_files(train, test)
    files = [(n, d[:-7] if n.endswith("data_batch_2.bin") else d) for n, d in files]
    write_tar(tmp_path / "cifar-10-binary.tar.gz", files)
    with pytest.raises(DataFormatError, match="3073-byte records"):
        CIFAR10(tmp_path)


# ---------------------------------------------------------------- restricted pickle


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _RunsShell(marker), "labels": [1]}, protocol=2)
    with pytest.raises(UnsafePickleError) as e:
        restricted_loads(evil, "data_batch_1")
    msg = str(e.value)
    assert "refused" in msg and "system" in msg and "data_batch_1" in msg
    assert not marker.exists()

    # The same file placed as a CIFAR-10 batch: the data set refuses it, naming the file.
    train, test = make_cifar()
    files = cifar_py_files(train, test)
    files = [(n, evil if n.endswith("data_batch_3") else d) for n, d in files]
    write_tar(tmp_path / "cifar-10-python.tar.gz", files)
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        CIFAR10(tmp_path)
    assert not marker.exists()


def test_restricted_unpickler_allows_exactly_array_pickles():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # What the official files hold, and a modern pickle of a plain array: both load.
    np.testing.assert_array_equal(restricted_loads(py_batch(a[:, :0], [])).get("data"), a[:, :0])
    np.testing.assert_array_equal(restricted_loads(pickle.dumps({"a": a}, protocol=4))["a"], a)
    with pytest.raises(UnsafePickleError, match="object-dtype"):
        restricted_loads(pickle.dumps(np.array([1, "x"], dtype=object), protocol=4))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_loads(b"\x80\x02cbuiltins\neval\nU\x031+1\x85R.")


# ------------------------------------------------------------------------ DataLoader


def _labelled(n=10, shape=(28, 28), seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n))


def test_loader_batches_shapes_dtypes_and_device(dev):
    ds = _labelled(10)
    loader = DataLoader(ds, batch_size=4, device=dev)
    assert len(loader) == 3
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 28, 28)] * 2 + [(2, 1, 28, 28)]
    xp = dev.xp
    for x, y in batches:
        assert dev.owns(x) and dev.owns(y)
        assert x.dtype == xp.float32 and y.dtype == xp.int64
    x0 = dlx.to_numpy(batches[0][0])
    np.testing.assert_array_equal(x0, ds.data[:4, None].astype(np.float32) / np.float32(255))
    assert 0.0 <= x0.min() and x0.max() <= 1.0
    assert dlx.to_numpy(batches[2][1]).tolist() == [8, 9]
    dropped = DataLoader(ds, batch_size=4, drop_last=True, device=dev)
    assert len(dropped) == 2 and [tuple(x.shape)[0] for x, _ in dropped] == [4, 4]


def test_loader_passes_float_data_through_as_float32(dev):
    feats = np.random.default_rng(0).standard_normal((7, 2))  # float64 table, e.g. a GAN toy set
    x, y = next(iter(DataLoader(ArrayDataset(feats, np.zeros(7)), batch_size=7, device=dev)))
    assert x.dtype == dev.xp.float32 and tuple(x.shape) == (7, 2)
    np.testing.assert_array_equal(dlx.to_numpy(x), feats.astype(np.float32))


def test_loader_puts_channels_last_images_in_nchw(dev):
    ds = _labelled(5, shape=(32, 32, 3))
    x, _ = next(iter(DataLoader(ds, batch_size=5, device=dev)))
    assert tuple(x.shape) == (5, 3, 32, 32)
    np.testing.assert_array_equal(
        dlx.to_numpy(x), ds.data.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    )


def test_loader_shuffle_sees_every_sample_once_and_reproduces_with_seed(dev):
    ds = _labelled(23)

    def epochs(loader, k):
        return [np.concatenate([dlx.to_numpy(y) for _, y in loader]).tolist() for _ in range(k)]

    a = epochs(DataLoader(ds, batch_size=5, shuffle=True, seed=7, device=dev), 3)
    b = epochs(DataLoader(ds, batch_size=5, shuffle=True, seed=7, device=dev), 3)
    c = epochs(DataLoader(ds, batch_size=5, shuffle=True, seed=8, device=dev), 1)
    assert a == b
    assert all(sorted(e) == list(range(23)) for e in a)
    assert a[0] != a[1] != a[2] and a[0] != c[0] and a[0] != list(range(23))
    # Resuming at epoch 2 gives epoch 2's order.
    resumed = DataLoader(ds, batch_size=5, shuffle=True, seed=7, device=dev)
    resumed.load_state_dict({"epoch": 2})
    assert epochs(resumed, 1)[0] == a[2]
    # The images travel with their labels.
    loader = DataLoader(ds, batch_size=5, shuffle=True, seed=1, device=dev)
    for x, y in loader:
        idx = dlx.to_numpy(y)
        np.testing.assert_array_equal(dlx.to_numpy(x) * 255, ds.data[idx, None].astype(np.float32))


def _orders(loader, k):
    return [np.concatenate([dlx.to_numpy(y) for _, y in loader]).tolist() for _ in range(k)]


@pytest.mark.parametrize("resident", [True, False])
def test_loader_order_is_the_same_on_every_device(dev, resident):
    """With a seed, a GPU run sees its data in the CPU run's order (same curves up to
    rounding), whatever stream the device draws its own random numbers from."""
    ds = _labelled(23)
    kw = dict(batch_size=5, shuffle=True, seed=7, resident=resident)
    assert _orders(DataLoader(ds, device=dev, **kw), 3) == _orders(DataLoader(ds, device="cpu", **kw), 3)


class _OtherStream:
    """A device stream that is not NumPy's PCG64 (as CUDA's Philox is not)."""

    def __init__(self, seed):
        self._gen = NumpyGenerator([*seed, 99])

    def __getattr__(self, name):
        return getattr(self._gen, name)


def test_loader_order_is_drawn_on_the_host_for_another_stream(monkeypatch):
    ds = _labelled(23)
    aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])
    kw = dict(batch_size=5, shuffle=True, seed=7, device="cpu")
    expected = _orders(DataLoader(ds, **kw), 3)
    plain_images = [dlx.to_numpy(x) for x, _ in DataLoader(ds, transform=aug, **kw)]
    backend = dlx.device("cpu").backend
    monkeypatch.setattr(type(backend), "generator", lambda self, index, seed: _OtherStream(seed))
    monkeypatch.setattr(type(backend), "host_generator", False)
    assert _orders(DataLoader(ds, **kw), 3) == expected
    # the transforms' random choices still come from the device's own stream
    other_images = [dlx.to_numpy(x) for x, _ in DataLoader(ds, transform=aug, **kw)]
    assert any(not np.array_equal(a, b) for a, b in zip(plain_images, other_images))


def test_loader_without_seed_follows_manual_seed(dev):
    ds = _labelled(12)

    def first_order():
        dlx.manual_seed(3)
        return [dlx.to_numpy(y).tolist() for _, y in DataLoader(ds, 4, shuffle=True, device=dev)]

    assert first_order() == first_order()


def test_loader_streaming_matches_resident():
    ds = _labelled(11, shape=(8, 8, 3))
    dev = dlx.device("cpu")
    aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])
    kw = dict(batch_size=4, shuffle=True, seed=5, device=dev, transform=aug)
    a, b = DataLoader(ds, resident=True, **kw), DataLoader(ds, resident=False, **kw)
    assert a.resident and not b.resident
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_runs_pixel_moves_on_uint8_with_identical_results(dev):
    """The loader crops/flips the uint8 batch before scaling: same numbers as doing it after."""
    ds = _labelled(9, shape=(6, 6, 3))
    norm = Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    aug = Compose([RandomCrop(6, padding=2), RandomHorizontalFlip(), norm])
    got = list(DataLoader(ds, 4, shuffle=True, seed=3, device=dev, transform=aug))
    plain = list(DataLoader(ds, 4, shuffle=True, seed=3, device=dev))
    gen = dev.backend.generator(dev.index, [3, 2, 0])  # the loader's epoch-0 stream
    gen.permutation(len(ds))
    for (x, y), (xf, yf) in zip(got, plain, strict=True):
        np.testing.assert_array_equal(dlx.to_numpy(y), dlx.to_numpy(yf))
        np.testing.assert_array_equal(dlx.to_numpy(x), dlx.to_numpy(aug(xf, generator=gen)))


class _Mismatched:
    data = np.zeros((3, 4, 4), np.uint8)
    targets = [1, 2]


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_labelled(4), batch_size=0)
    with pytest.raises(ValueError, match="targets"):
        DataLoader(_Mismatched())


# ------------------------------------------------------------------------ transforms


def test_normalize_is_exact(dev):
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 4, 5), dtype=np.float32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    want = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    got = Normalize(mean, std)(on(dev, x))
    assert dev.owns(got) and got.dtype == dev.xp.float32
    np.testing.assert_array_equal(dlx.to_numpy(got), want)
    with pytest.raises(ValueError, match="channel"):
        Normalize((0.5, 0.5), (1.0, 1.0))(on(dev, x))
    with pytest.raises(ValueError, match="floating"):
        Normalize(0.5, 0.5)(on(dev, (x * 255).astype(np.uint8)))
    with pytest.raises(ValueError, match="zero"):
        Normalize(0.5, 0.0)


def _distinct_images(n, c=2, h=6, w=7):
    return (np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w) + 1) / 1000


def test_random_crop_is_per_image_and_zero_padded(dev):
    n, pad, size = 48, 2, (6, 7)
    x = _distinct_images(n)
    gen = dev.backend.generator(dev.index, [11])
    out = dlx.to_numpy(RandomCrop(size, padding=pad)(on(dev, x), generator=gen))
    assert out.shape == (n, 2, 6, 7)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = []
    for i in range(n):
        hits = [(a, b) for a in range(2 * pad + 1) for b in range(2 * pad + 1)
                if np.array_equal(out[i], padded[i, :, a : a + 6, b : b + 7])]  # fmt: skip
        assert len(hits) == 1, f"image {i} is not one window of its padded original"
        offsets.append(hits[0])
    assert len(set(offsets)) > 10  # per image, not one shift for the whole batch
    assert {a for a, _ in offsets} == set(range(5)) and {b for _, b in offsets} == set(range(5))
    # (left, top, right, bottom) padding: one extra row on top, so rows start at 0 or 1.
    out = dlx.to_numpy(RandomCrop((6, 7), padding=(0, 1, 0, 0))(on(dev, x), generator=gen))
    top = np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))
    starts = [[a for a in (0, 1) if np.array_equal(out[i], top[i, :, a : a + 6])] for i in range(n)]
    assert all(len(s) == 1 for s in starts) and {s[0] for s in starts} == {0, 1}
    np.testing.assert_array_equal(dlx.to_numpy(RandomCrop((6, 7))(on(dev, x))), x)
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(9)(on(dev, x))


def test_random_horizontal_flip_is_per_image(dev):
    n = 40
    x = _distinct_images(n)
    out = dlx.to_numpy(RandomHorizontalFlip()(on(dev, x)))
    flipped = [np.array_equal(out[i], x[i, :, :, ::-1]) for i in range(n)]
    kept = [np.array_equal(out[i], x[i]) for i in range(n)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 5 < sum(flipped) < 35
    np.testing.assert_array_equal(dlx.to_numpy(RandomHorizontalFlip(0.0)(on(dev, x))), x)
    np.testing.assert_array_equal(dlx.to_numpy(RandomHorizontalFlip(1.0)(on(dev, x))), x[:, :, :, ::-1])


def test_fused_crop_and_flip_equal_the_two_steps(dev):
    x = on(dev, _distinct_images(16))
    crop, flip = RandomCrop((6, 7), padding=2), RandomHorizontalFlip()
    fused = Compose([crop, flip])(x, generator=dev.backend.generator(dev.index, [9]))
    gen = dev.backend.generator(dev.index, [9])
    apart = flip(crop(x, generator=gen), generator=gen)
    np.testing.assert_array_equal(dlx.to_numpy(fused), dlx.to_numpy(apart))


def test_compose_applies_in_order_and_is_reproducible(dev):
    x = on(dev, _distinct_images(8))
    aug = Compose([RandomCrop((6, 7), padding=1), RandomHorizontalFlip(), Normalize(0.1, 2.0)])
    a = aug(x, generator=dev.backend.generator(dev.index, [4]))
    b = aug(x, generator=dev.backend.generator(dev.index, [4]))
    np.testing.assert_array_equal(dlx.to_numpy(a), dlx.to_numpy(b))
    assert aug.geometric is False and Compose([RandomHorizontalFlip()]).geometric
    plain = Compose([lambda t: t * 2, Normalize(0.0, 2.0)])  # plain callables get x only
    np.testing.assert_array_equal(dlx.to_numpy(plain(x)), dlx.to_numpy(x))
    assert "RandomCrop" in repr(aug)


# ------------------------------------------------------------------ declared sizes checked first


def test_idx_gzip_bomb_is_refused_before_it_is_expanded(tmp_path, monkeypatch):
    """A small gzip whose IDX header declares more than an MNIST file holds is refused from
    its header; one that declares a little and expands to much more stops at the declared
    size. Neither is decompressed in full (the cap is lowered: 4 MB of zeros stand for 3 GiB)."""
    import dlx.data.formats as formats

    monkeypatch.setattr(formats, "MAX_IDX_BYTES", 1 << 20)
    reads = []
    real_open = gzip.open

    def counting_open(*a, **k):
        f = real_open(*a, **k)
        real_read = f.read

        def read(n=-1):
            assert n is not None and n >= 0, "read the whole stream"
            data = real_read(n)
            reads.append(len(data))
            return data

        f.read = read
        return f

    monkeypatch.setattr(gzip, "open", counting_open)
    zeros = bytes(4 << 20)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 4 << 20, 1, 1) + zeros))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.gz: IDX header says shape "
                       r"\(4194304, 1, 1\) \(4,194,304 bytes of data\), more than"):
        read_idx(bomb)
    assert sum(reads) <= 16
    reads.clear()
    small = tmp_path / "small.gz"  # declares 10 bytes, then 4 MB follow
    small.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 10) + zeros))
    with pytest.raises(DataFormatError, match="small.gz: IDX header says shape .*holds more"):
        read_idx(small)
    assert sum(reads) <= 32


def test_idx_dimensions_that_overflow_name_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB4I", 0, 0x0E, 4, *(4_000_000_000,) * 4) + bytes(64))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte: IDX header says shape "
                                              r"\(4000000000, .*more than"):
        read_idx(path)


def test_empty_data_sets_are_named_and_said_to_be_empty(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=0, n_test=0)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.gz: the data set is empty"):
        MNIST(tmp_path, train=True)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    train, test = make_cifar(n_per_batch=0, n_test=0)
    write_tar(folder / "cifar-10-python.tar.gz", cifar_py_files(train, test))
    with pytest.raises(DataFormatError, match=r"cifar-10-python.tar.gz: the data set is empty"):
        CIFAR10(tmp_path, train=False)


def test_cifar_pickle_declaring_a_huge_array_is_refused_unallocated():
    """93 GiB declared in a few bytes: refused from the declaration (nothing allocated)."""
    huge = (93 << 30).to_bytes(5, "little")  # LONG1: the shape (93 GiB,) in 5 bytes
    raw = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05" + huge
           + b"\x85U\x01b\x87R.")
    with pytest.raises(DataFormatError, match=r"batch: the pickle declares a \(99857989632,\) "
                                              r"int8 array .*more than a CIFAR-10 batch holds"):
        restricted_loads(raw, "batch")


def test_tar_member_declaring_more_than_cifar_holds_is_refused(tmp_path, monkeypatch):
    import dlx.data.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_MEMBER_BYTES", 1000)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    write_tar(folder / "cifar-10-python.tar.gz", cifar_py_files(*make_cifar(n_per_batch=2, n_test=2)))
    with pytest.raises(DataFormatError, match=r"member 'cifar-10-batches-py/test_batch' declares "
                                              r"[\d,]+ bytes, more than a CIFAR-10 file holds"):
        CIFAR10(tmp_path, train=False)
