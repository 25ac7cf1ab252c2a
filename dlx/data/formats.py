"""The official files' formats, read defensively: IDX (MNIST) and the Python pickles of
CIFAR-10, through a restricted unpickler. Declared sizes are checked against what the format
allows before anything is read or allocated."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path

import numpy as np

from .download import DataFormatError

# MNIST's largest file is 47 MB and a CIFAR-10 batch 30 MB; a file that declares more than
# these is not one of them (corrupt or crafted), and is refused before it is expanded.
MAX_IDX_BYTES = 1 << 30
MAX_MEMBER_BYTES = 256 << 20

# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path) -> np.ndarray:
    """The array in an IDX file (MNIST's format), gzip-compressed or not. The header is read
    first; a size over ``MAX_IDX_BYTES`` is refused and the data read stops at the declared
    size, so a small gzip that would expand to gigabytes is never expanded."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise DataFormatError(f"{path}: not an IDX file (bad magic number {head.hex()})")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataFormatError(f"{path}: IDX header cut short")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            need = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if need > MAX_IDX_BYTES:
                raise DataFormatError(
                    f"{path}: IDX header says shape {shape} ({need:,} bytes of data), more than "
                    f"the {MAX_IDX_BYTES:,} an MNIST-style file holds (corrupt or not the official file)")
            raw = f.read(need)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) != need or extra:
        held = f"{len(raw)}" if len(raw) < need else "more"
        raise DataFormatError(
            f"{path}: IDX header says shape {shape} ({need} bytes of data), "
            f"the file holds {held} (truncated or corrupt)"
        )
    arr = np.frombuffer(raw, dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


# ------------------------------------------------------------------ restricted pickle


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something an official CIFAR-10 batch never contains."""


def _np_reconstruct(subtype, shape, dtype):
    # What numpy.core.multiarray._reconstruct does, for plain ndarrays only.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused to build an array of type {subtype!r}")
    dt = _np_dtype(dtype)
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"refused the array shape {str(shape)[:60]}")
    if math.prod(shape) * dt.itemsize > MAX_MEMBER_BYTES:
        raise DataFormatError(f"the pickle declares a {shape} {dt} array "
                              f"({math.prod(shape) * dt.itemsize:,} bytes), more than a CIFAR-10 "
                              f"batch holds ({MAX_MEMBER_BYTES:,} at most): corrupt or crafted")
    return np.ndarray(shape, dtype=dt)


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, (str, bytes)):
        raise UnsafePickleError(f"refused dtype specification {spec!r}")
    dt = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec, align, copy)
    if dt.hasobject:
        raise UnsafePickleError("refused an object-dtype array (it would unpickle arbitrary objects)")
    return dt


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the globals an official CIFAR-10 batch uses: NumPy's array and dtype
    reconstruction (old ``numpy.core`` and new ``numpy._core`` names). Lists, dicts, ints
    and strings are pickle opcodes and need no globals."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _np_dtype,
    }

    def __init__(self, file, source: str):
        # Python 2 strings arrive as bytes: the 30 MB pixel string goes to NumPy uncopied.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to load the global {module}.{name}: official CIFAR-10 "
                f"batches only hold NumPy arrays, lists, dicts and strings, so this file is "
                f"not one (corrupt or tampered with); nothing from it was run"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle")


def restricted_loads(data: bytes, source: str = "pickle"):
    """Unpickle ``data`` allowing only what CIFAR-10's Python batches contain. Python 2
    strings come back as bytes, except the keys of a top-level dict (made str)."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
        if isinstance(obj, dict):
            obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
        return obj
    except (UnsafePickleError, DataFormatError) as e:
        if not str(e).startswith(source):
            raise type(e)(f"{source}: {e}") from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:  # fmt: skip
        raise DataFormatError(f"{source}: not a readable CIFAR-10 pickle ({e})") from e
