"""Checkpoints: ``dlx.save(path, model, optimizer=None, **meta)`` and ``dlx.load(...)``.

One ``.npz`` file (read with ``allow_pickle=False``), written to a temporary file in the
same folder and renamed into place, so a crash never leaves half a checkpoint. It holds
the model's parameters and buffers (``model/<name>``), the optimizer's state arrays
(``optimizer/<index>/<key>``), and one JSON document (``__meta__``) with the dlx version,
layer shapes and dtypes, the optimizer's hyper-parameters and step counts, the RNG state
and whatever ``**meta`` the caller adds (epoch, history, scheduler state...). Arrays are
stored as host NumPy arrays, so a checkpoint saved on ``cuda`` loads on ``cpu`` and back.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import zipfile

import numpy as np

from dlx._device import is_array, to_numpy
from dlx._random import check_rng_state, get_rng_state, set_rng_state

FORMAT = "dlx-checkpoint-1"

# Temporary files of ``save``: ``.dlx-tmp-XXXXXXXX.npz`` (and ``.tmp-XXXXXXXX.npz``, the
# name older dlx versions used), XXXXXXXX being mkstemp's 8 random characters.
_TMP_PREFIX = ".dlx-tmp-"
_TMP_NAME = re.compile(r"^\.(?:dlx-)?tmp-[a-z0-9_]{8}\.npz$")
_STALE_AFTER_S = 600.0
_MAX_HEADER_BYTES = 256 << 20  # the JSON header as UCS-4; a long history is a few MB


def _jsonable(value):
    """Python scalars, lists and dicts as JSON-able values (NumPy scalars become Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if is_array(value):
        arr = to_numpy(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(folder: str) -> None:
    """Delete what killed saves left in ``folder``. Rule: only names of exactly dlx's
    temporary pattern (``_TMP_NAME``), and only files unmodified for ``_STALE_AFTER_S``
    seconds: a save in progress writes its file continuously and renames it within
    seconds, so a temporary that old belongs to a save that was killed. Anything else
    (other names, files in other folders, recent files) is never touched."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not _TMP_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and \
                    now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S:
                os.unlink(entry.path)
        except OSError:
            pass  # gone already, or not ours to delete: leave it


def save(path, model, optimizer=None, **meta) -> str:
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; returns the path.

    ``meta`` values must be JSON-able (numbers, strings, lists, dicts): e.g. ``epoch=3``,
    ``history=...``, ``scheduler=scheduler.state_dict()``.
    """
    import dlx

    path = os.fspath(path)
    arrays = {}
    shapes = {}
    for name, value in model.state_dict().items():
        host = to_numpy(value)
        arrays[f"model/{name}"] = np.array(host, copy=True)
        shapes[name] = {"shape": list(host.shape), "dtype": host.dtype.name}
    header = {
        "format": FORMAT,
        "dlx_version": dlx.__version__,
        "model_class": type(model).__name__,
        "layers": shapes,
        "rng_state": get_rng_state(),
        "meta": _jsonable(meta),
    }
    try:
        json.dumps(header["meta"])
    except TypeError as e:
        raise TypeError(f"dlx.save: meta values must be JSON-able (numbers, strings, lists, "
                        f"dicts): {e}") from None
    if optimizer is not None:
        sd = optimizer.state_dict()
        opt_scalars = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if is_array(value) and getattr(value, "ndim", 0) > 0:
                    arrays[f"optimizer/{idx}/{key}"] = np.array(to_numpy(value), copy=True)
                else:
                    opt_scalars.setdefault(str(idx), {})[key] = _jsonable(value)
        header["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_groups": _jsonable(sd["param_groups"]),
            "scalars": opt_scalars,
        }
    arrays["__meta__"] = np.array(json.dumps(header))

    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".npz", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is a normal file
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_USED = ("__meta__.npy", "model/", "optimizer/")  # the entries dlx reads; others are ignored


class _Archive:
    """An ``.npz`` opened for reading: the declared shape and dtype of each entry dlx uses,
    read from its header before any data, so nothing is allocated for a size the file does
    not hold, and entries dlx does not use are never read."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        try:
            with open(path, "rb") as f:
                start = f.read(4)
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            self.zip = None
        if self.zip is None or start[:2] != b"PK":
            raise ValueError(f"{path!r} is not a readable dlx checkpoint: not an .npz archive (it "
                             f"starts with {start!r}); give a model.npz written by dlx train or dlx.save")
        self.entries: dict = {}
        try:
            for info in self.zip.infolist():
                if info.filename.endswith(".npy") and info.filename.startswith(_USED):
                    self.entries[info.filename[:-4]] = self._inspect(info)
        except BaseException:
            self.zip.close()
            raise

    def bad(self, what: str) -> ValueError:
        return ValueError(f"{self.path!r} is a damaged dlx checkpoint: {what}; it was not written "
                          f"by dlx.save as it is (edited or corrupt): use another checkpoint")

    def _inspect(self, info):
        key = info.filename[:-4]
        try:
            with self.zip.open(info) as fp:
                version = np.lib.format.read_magic(fp)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"npy format version {version}")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fp)
                offset = fp.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as e:
            raise self.bad(f"entry {key!r} has no readable array header ({e})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise self.bad(f"entry {key!r} has the structured or object dtype {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise self.bad(f"entry {key!r} declares shape {shape} of {dtype} ({nbytes:,} bytes) "
                           f"but holds {max(info.file_size - offset, 0):,} bytes")
        return shape, dtype

    def array(self, key: str) -> np.ndarray:
        try:
            with self.zip.open(key + ".npy") as fp:
                return np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise self.bad(f"entry {key!r} cannot be read ({e})") from None

    def header(self) -> dict:
        entry = self.entries.get("__meta__")
        if entry is None:
            raise ValueError(f"{self.path!r} is an .npz file but not a dlx checkpoint (no __meta__ entry)")
        shape, dtype = entry
        if shape != () or dtype.kind != "U" or dtype.itemsize > _MAX_HEADER_BYTES:
            raise self.bad(f"its __meta__ entry is {dtype} of shape {shape}, not one JSON text")
        text = str(self.array("__meta__"))
        try:
            header = json.loads(text)
        except RecursionError:
            raise self.bad("its __meta__ JSON is nested too deeply") from None
        except ValueError as e:
            raise self.bad(f"its __meta__ entry is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise self.bad(f"its __meta__ entry is a JSON {type(header).__name__}, not an object")
        if header.get("format") != FORMAT:
            raise ValueError(f"{self.path!r}: unknown checkpoint format {str(header.get('format'))[:40]!r}")
        _check_header(header, self.bad)
        for key in self.entries:
            if key.startswith("optimizer/") and not _OPT_KEY.match(key):
                raise self.bad(f"entry {key!r} is not optimizer/<index>/<name>")
        return header

    def close(self):
        self.zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_OPT_KEY = re.compile(r"^optimizer/\d{1,9}/[^/]+$")


def _check_header(header: dict, bad) -> None:
    """Raise ``bad(what)`` unless the header's parts have the types ``save`` writes."""
    def expect(value, kind, what):
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise bad(f"{what} is a {type(value).__name__}, expected a {kind.__name__}")

    expect(header.get("meta", {}), dict, "meta")
    expect(header.get("layers", {}), dict, "layers")
    for name, layer in header.get("layers", {}).items():
        expect(layer, dict, f"layers[{name!r}]")
        expect(layer.get("shape", []), list, f"layers[{name!r}].shape")
    for name in ("model_class", "dlx_version"):
        expect(header.get(name, ""), str, name)
    if "optimizer" not in header:
        return
    opt = header["optimizer"]
    expect(opt, dict, "optimizer")
    for name, kind in (("class", str), ("param_groups", list), ("scalars", dict)):
        if name not in opt:
            raise bad(f"optimizer.{name} is missing")
        expect(opt[name], kind, f"optimizer.{name}")
    for i, group in enumerate(opt["param_groups"]):
        expect(group, dict, f"optimizer.param_groups[{i}]")
    for idx, scalars in opt["scalars"].items():
        if not idx.isdigit() or len(idx) > 9:
            raise bad(f"optimizer.scalars has the key {idx[:20]!r}, not a parameter index")
        expect(scalars, dict, f"optimizer.scalars[{idx!r}]")


def read_header(path) -> dict:
    """The JSON header of a checkpoint, validated, without reading any array."""
    with _Archive(os.fspath(path)) as archive:
        return archive.header()


def read(path) -> tuple[dict, dict]:
    """(header, arrays) of a checkpoint: the ``model/`` and ``optimizer/`` arrays dlx uses
    (other entries are not read), host NumPy arrays; clear errors for bad files."""
    with _Archive(os.fspath(path)) as archive:
        header = archive.header()
        return header, {k: archive.array(k) for k in archive.entries if k != "__meta__"}


def _check_sizes(archive: _Archive, model, optimizer) -> None:
    """Refuse optimizer arrays whose declared shape is not their parameter's, before reading."""
    if optimizer is None:
        return
    shapes = [tuple(p.data.shape) for g in optimizer.param_groups for p in g["params"]]
    for key, (shape, _) in archive.entries.items():
        if key.startswith("optimizer/"):
            idx = int(key.split("/")[1])
            if idx >= len(shapes) or shapes[idx] != shape:
                want = f"parameter {idx} has shape {shapes[idx]}" if idx < len(shapes) else \
                    f"the optimizer has {len(shapes)} parameters"
                raise ValueError(f"{archive.path!r}: {key} has shape {shape} but {want}: the "
                                 f"checkpoint is for another model or optimizer; nothing was loaded")


def load(path, model, optimizer=None, strict: bool = True, restore_rng: bool = True) -> dict:
    """Load a checkpoint written by ``save`` into ``model`` (and ``optimizer``), on
    whatever device they live. Returns the ``meta`` dict saved with it.

    A mismatch (missing, unexpected or mis-shaped keys) raises ValueError listing them all,
    and nothing is loaded. ``restore_rng`` puts every dlx generator back where it was at
    save time, so a resumed run draws the same numbers as an uninterrupted one.
    """
    path = os.fspath(path)
    with _Archive(path) as archive:
        header = archive.header()
        _check_sizes(archive, model, optimizer)
        own = model.state_dict()
        arrays = {}
        for key, (shape, dtype) in archive.entries.items():
            name = key[len("model/"):]
            if key.startswith(("model/", "optimizer/")) and dtype.kind not in "biuf":
                # refuse rather than drop an imaginary part or a string
                raise ValueError(f"{path!r}: {key} holds {dtype} values; dlx loads only real "
                                 f"numbers (bool, int, float): save real arrays, e.g. .real of "
                                 f"a complex array whose imaginary part is zero")
            if key.startswith("model/") and (name not in own or tuple(own[name].shape) != shape):
                # never read: load_state_dict refuses it (or, unexpected and not strict, skips it)
                arrays[key] = np.broadcast_to(np.zeros((), dtype), shape)
            elif key.startswith("model/") or (key.startswith("optimizer/") and optimizer is not None):
                arrays[key] = archive.array(key)
    rng_streams = None
    if restore_rng and header.get("rng_state"):
        try:  # validated before anything is loaded: all or nothing
            rng_streams = check_rng_state(header["rng_state"])
        except ValueError as e:
            raise ValueError(f"{path!r}: {e}; nothing was loaded (pass "
                             f"restore_rng=False to load the weights alone)") from None
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if optimizer is not None and "optimizer" not in header:
        raise ValueError(f"{path!r} holds no optimizer state; load without optimizer=")
    if optimizer is not None:
        opt_header = header["optimizer"]
        if opt_header["class"] != type(optimizer).__name__:
            raise ValueError(f"{path!r}: the checkpoint's optimizer is {opt_header['class']}, "
                             f"got a {type(optimizer).__name__}")
        opt_state: dict = {}
        for k, v in arrays.items():
            if k.startswith("optimizer/"):
                _, idx, key = k.split("/", 2)
                opt_state.setdefault(int(idx), {})[key] = v
        for idx, scalars in opt_header["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(scalars)
        opt_sd = {"state": opt_state, "param_groups": opt_header["param_groups"]}
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=strict)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_sd)
        except Exception:
            model.load_state_dict(before)  # all or nothing
            raise
    if rng_streams is not None:
        set_rng_state(header["rng_state"])  # checked above; skips devices not present here
    return header.get("meta", {})
