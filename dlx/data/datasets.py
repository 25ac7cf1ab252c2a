"""MNIST and CIFAR-10 read from their official download files into host (NumPy) arrays.

A data folder (``root``; default ``DLX_DATA_DIR``, else ``~/.cache/dlx``) holds
``mnist/`` and ``cifar10/`` with the official file names. Like torchvision, ``.data`` is
uint8 (N, H, W) for MNIST and (N, 32, 32, 3) for CIFAR-10, ``.targets`` int64 (N,),
``.classes`` the class names; ``dataset[i]`` is ``(image, label)``.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .download import DataFormatError, default_root, download_file, extract_tar, file_lock
from .formats import MAX_MEMBER_BYTES, UnsafePickleError, read_idx, restricted_loads
from .loader import integer_labels

__all__ = [
    "CIFAR10",
    "MNIST",
    "ArrayDataset",
    "UnsafePickleError",
    "read_idx",
    "restricted_loads",
]


class _Labelled:
    """Indexing shared by the data sets: ``data`` (N, ...) and int ``targets`` (N,) in memory;
    ``ds[i]`` is ``(image, label)``."""

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


class ArrayDataset(_Labelled):
    """In-memory data set from host arrays: ``data`` (N, ...) and integer ``targets`` (N,)."""

    def __init__(self, data, targets, classes=None):
        self.data = np.asarray(data)
        self.targets = integer_labels(targets, "ArrayDataset targets")
        if self.targets.ndim != 1 or len(self.targets) != len(self.data):
            raise ValueError(
                f"ArrayDataset: targets must have shape ({len(self.data)},) to match data "
                f"{self.data.shape}, got {self.targets.shape}"
            )
        self.classes = list(classes) if classes is not None else None


def _root(root) -> Path:
    return default_root() if root is None else Path(root).expanduser()


def _missing(name: str, folder: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found in {folder}: expected {expected} there. Get it with "
        f"{name}(root=..., download=True), or put the official files in <data folder>/{folder.name}/ "
        f"and pass root=<data folder> (dlx command: --data-dir) or set DLX_DATA_DIR "
        f"(default ~/.cache/dlx)."
    )


class MNIST(_Labelled):
    """MNIST digits: 60,000 training and 10,000 test images, 28x28 grey, uint8.

    Reads ``<root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (or the same
    names without ``.gz``). ``download=True`` fetches missing files from ``mirrors``
    (torchvision's S3 copy, TensorFlow's copy, then Yann LeCun's original site), each
    checked against the official MD5. Files already present are used as they are.
    """

    folder = "mnist"
    mirrors = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    # The MD5s published with the originals (and pinned by torchvision).
    sizes = {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
             "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}
    resources = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    classes = [
        "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
        "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
    ]  # fmt: skip

    def __init__(self, root=None, train: bool = True, download: bool = False):
        self.root = _root(root)
        self.train = bool(train)
        prefix = "train" if self.train else "t10k"
        names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
        folder = self.root / self.folder
        paths = self._find(names)
        if paths is None and download:
            for name in names:
                if _find_variant(folder, name) is None:
                    download_file(
                        [m + name for m in self.mirrors],
                        folder / name,
                        md5=self.resources.get(name),
                        size=self.sizes.get(name),
                    )
            paths = self._find(names)
        if paths is None:
            raise _missing("MNIST", folder, " and ".join(names))
        images, labels = (read_idx(p) for p in paths)
        labels = integer_labels(labels, str(paths[1]), DataFormatError)
        if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1:
            raise DataFormatError(
                f"{paths[0]}, {paths[1]}: expected uint8 images (N, H, W) and labels (N,), "
                f"got {images.dtype} {images.shape} and {labels.shape}"
            )
        if len(images) == 0:
            raise DataFormatError(f"{paths[0]}: the data set is empty (0 images); put the official "
                                  f"MNIST files there")
        if len(images) != len(labels):
            raise DataFormatError(
                f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataFormatError(f"{paths[1]}: labels outside 0..9")
        self.data = images
        self.targets = labels.astype(np.int64)

    def _find(self, names):
        # <root>/mnist/ is the layout; <root> itself and torchvision's MNIST/raw/ also work.
        for folder in (self.root / self.folder, self.root, self.root / "MNIST" / "raw"):
            paths = [_find_variant(folder, n) for n in names]
            if all(paths):
                return paths
        return None

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"MNIST(split={split}, images={len(self)}, root='{self.root}')"


def _find_variant(folder: Path, name: str):
    """``name`` (``x.gz``) or its uncompressed twin (``x``) in ``folder``, else None."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------ CIFAR-10


class CIFAR10(_Labelled):
    """CIFAR-10: 50,000 training and 10,000 test colour images, 32x32, 10 classes.

    Reads, from ``<root>/cifar10/``, the first of: the extracted Python version
    ``cifar-10-batches-py/``, its archive ``cifar-10-python.tar.gz`` (read in place),
    the extracted binary version ``cifar-10-batches-bin/`` or ``cifar-10-binary.tar.gz``
    (``format="python"`` or ``"binary"`` picks one). Pickles go through a restricted
    unpickler. ``download=True`` fetches the Python archive (official MD5), extracts it
    safely and reads the batches.
    """

    folder = "cifar10"
    mirrors = [
        "https://www.cs.toronto.edu/~kriz/",
        "https://cave.cs.toronto.edu/kriz/",
    ]
    # The MD5s published on https://www.cs.toronto.edu/~kriz/cifar.html.
    sizes = {"cifar-10-python.tar.gz": 170498071, "cifar-10-binary.tar.gz": 170052171}
    resources = {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    }
    classes = [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    py_dir, py_archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
    bin_dir, bin_archive = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"

    def __init__(self, root=None, train: bool = True, download: bool = False, format=None):
        if format not in (None, "python", "binary"):
            raise ValueError(f"CIFAR10: format must be None, 'python' or 'binary', got {format!r}")
        self.root = _root(root)
        self.train = bool(train)
        folder = self.root / self.folder
        source = self._find(format)
        if source is None and download:
            fmt = format or "python"
            self._download(folder, fmt)
            source = self._find(fmt)
        if source is None:
            raise _missing("CIFAR10", folder, self._expected(format))
        kind, path = source
        self.source = path
        reader = {"py_dir": self._read_py_dir, "py_tar": self._read_py_tar,
                  "bin_dir": self._read_bin_dir, "bin_tar": self._read_bin_tar}[kind]  # fmt: skip
        flat, labels, classes = reader(path)
        # The files hold R, G, B planes per image; torchvision's .data is (N, 32, 32, 3).
        self.data = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = labels.astype(np.int64)
        if classes:
            self.classes = classes

    # which files ---------------------------------------------------------------
    def _batches(self):
        return [f"data_batch_{i}" for i in range(1, 6)] if self.train else ["test_batch"]

    def _expected(self, format):
        names = ", ".join(self._batches())
        py = f"{self.py_dir}/ (with {names}, batches.meta) or {self.py_archive}"
        bn = f"{self.bin_dir}/ (with {names.replace(',', '.bin,')}.bin) or {self.bin_archive}"
        return {"python": py, "binary": bn}.get(format, f"{py}, or the binary version {bn}")

    def _find(self, format):
        for folder in (self.root / self.folder, self.root):
            options = []
            if format in (None, "python"):
                options += [("py_dir", folder / self.py_dir), ("py_tar", folder / self.py_archive)]
            if format in (None, "binary"):
                options += [("bin_dir", folder / self.bin_dir),
                            ("bin_tar", folder / self.bin_archive)]  # fmt: skip
            for kind, path in options:
                if kind.endswith("_tar") and path.is_file():
                    return kind, path
                if kind.endswith("_dir") and path.is_dir() and self._dir_complete(kind, path):
                    return kind, path
        return None

    def _dir_complete(self, kind, path):
        suffix = ".bin" if kind == "bin_dir" else ""
        return all((path / f"{b}{suffix}").is_file() for b in self._batches())

    def _download(self, folder: Path, fmt: str):
        name = self.py_archive if fmt == "python" else self.bin_archive
        with file_lock(folder / ".cifar10-extract.lock"):
            if self._find(fmt) is not None:  # another process got it while we waited
                return
            archive = folder / name
            if not archive.is_file():
                download_file([m + name for m in self.mirrors], archive, md5=self.resources.get(name),
                              size=self.sizes.get(name))
            extract_tar(archive, folder)

    # readers ---------------------------------------------------------------------
    def _parse_batch(self, raw: bytes, where: str):
        d = restricted_loads(raw, where)
        if not isinstance(d, dict) or "data" not in d or "labels" not in d:
            raise DataFormatError(f"{where}: expected a dict with 'data' and 'labels'")
        x, y = d["data"], np.asarray(d["labels"])
        if y.size == 0:  # [] is float64 to NumPy
            y = y.astype(np.int64)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataFormatError(
                f"{where}: 'data' should be a uint8 (N, 3072) array, got "
                f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
            )
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataFormatError(f"{where}: 'labels' should be {len(x)} integers")
        return x, y

    def _parse_meta(self, raw: bytes, where: str):
        d = restricted_loads(raw, where)
        names = d.get("label_names") if isinstance(d, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DataFormatError(f"{where}: expected a dict with 'label_names'")
        return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]

    def _join(self, parts, classes):
        if sum(len(p[0]) for p in parts) == 0:
            raise DataFormatError(f"{self.source}: the data set is empty (0 images); put the "
                                  f"official CIFAR-10 files there")
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        n = len(classes) if classes else 10
        if y.size and (y.min() < 0 or y.max() >= n):
            raise DataFormatError(f"{self.source}: labels outside 0..{n - 1}")
        return x, y, classes

    def _read_py_dir(self, path: Path):
        parts = [self._parse_batch((path / b).read_bytes(), str(path / b)) for b in self._batches()]
        meta = path / "batches.meta"
        classes = self._parse_meta(meta.read_bytes(), str(meta)) if meta.is_file() else None
        return self._join(parts, classes)

    def _read_py_tar(self, path: Path):
        names = [*self._batches(), "batches.meta"]
        files = _read_members(path, self.py_dir, names, optional={"batches.meta"})
        parts = [self._parse_batch(files[b], f"{path}:{b}") for b in self._batches()]
        meta = files.get("batches.meta")
        classes = self._parse_meta(meta, f"{path}:batches.meta") if meta else None
        return self._join(parts, classes)

    def _parse_bin(self, raw: bytes, where: str):
        if len(raw) % 3073:
            raise DataFormatError(f"{where}: {len(raw)} bytes is not a whole number of 3073-byte records")
        rec = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
        return rec[:, 1:].copy(), rec[:, 0].copy()

    def _bin_classes(self, raw):
        names = [n.strip() for n in raw.decode("latin1").splitlines() if n.strip()]
        return names or None

    def _read_bin_dir(self, path: Path):
        parts = [self._parse_bin((path / f"{b}.bin").read_bytes(), str(path / f"{b}.bin"))
                 for b in self._batches()]  # fmt: skip
        meta = path / "batches.meta.txt"
        return self._join(parts, self._bin_classes(meta.read_bytes()) if meta.is_file() else None)

    def _read_bin_tar(self, path: Path):
        names = [f"{b}.bin" for b in self._batches()] + ["batches.meta.txt"]
        files = _read_members(path, self.bin_dir, names, optional={"batches.meta.txt"})
        parts = [self._parse_bin(files[f"{b}.bin"], f"{path}:{b}.bin") for b in self._batches()]
        meta = files.get("batches.meta.txt")
        return self._join(parts, self._bin_classes(meta) if meta else None)

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"CIFAR10(split={split}, images={len(self)}, source='{self.source}')"


def _read_members(archive: Path, folder: str, names, optional=()):
    """The bytes of ``folder/name`` for each name, read from the archive without extracting."""
    want = {f"{folder}/{n}": n for n in names}
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                key = m.name.removeprefix("./")
                if key not in want:
                    continue
                if not m.isfile():
                    raise DataFormatError(f"{archive}: member {m.name!r} is not a regular file")
                if m.size > MAX_MEMBER_BYTES:
                    raise DataFormatError(f"{archive}: member {m.name!r} declares {m.size:,} bytes, "
                                          f"more than a CIFAR-10 file holds (corrupt or crafted)")
                found[want[key]] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(f"{archive}: not a readable tar archive ({e})") from e
    missing = [f"{folder}/{n}" for n in names if n not in found and n not in optional]
    if missing:
        raise DataFormatError(f"{archive}: missing member(s) {', '.join(missing)}")
    return found
