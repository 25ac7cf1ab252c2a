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


def read(path) -> tuple[dict, dict]:
    """(header, arrays) of a checkpoint, host NumPy arrays; clear errors for bad files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path!r} is not a readable dlx checkpoint (.npz): {e}") from None
    if "__meta__" not in arrays:
        raise ValueError(f"{path!r} is an .npz file but not a dlx checkpoint (no __meta__ entry)")
    header = json.loads(str(arrays.pop("__meta__")))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path!r}: unknown checkpoint format {header.get('format')!r}")
    return header, arrays


def load(path, model, optimizer=None, strict: bool = True, restore_rng: bool = True) -> dict:
    """Load a checkpoint written by ``save`` into ``model`` (and ``optimizer``), on
    whatever device they live. Returns the ``meta`` dict saved with it.

    A mismatch (missing, unexpected or mis-shaped keys) raises ValueError listing them all,
    and nothing is loaded. ``restore_rng`` puts every dlx generator back where it was at
    save time, so a resumed run draws the same numbers as an uninterrupted one.
    """
    header, arrays = read(path)
    for key, value in arrays.items():  # refuse rather than drop an imaginary part or a string
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{os.fspath(path)!r}: {key} holds {value.dtype} values; dlx loads "
                             f"only real numbers (bool, int, float): save real arrays, e.g. "
                             f".real of a complex array whose imaginary part is zero")
    rng_streams = None
    if restore_rng and header.get("rng_state"):
        try:  # validated before anything is loaded: all or nothing
            rng_streams = check_rng_state(header["rng_state"])
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)!r}: {e}; nothing was loaded (pass "
                             f"restore_rng=False to load the weights alone)") from None
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if optimizer is not None and "optimizer" not in header:
        raise ValueError(f"{os.fspath(path)!r} holds no optimizer state; load without optimizer=")
    if optimizer is not None:
        opt_header = header["optimizer"]
        if opt_header["class"] != type(optimizer).__name__:
            raise ValueError(f"checkpoint optimizer is {opt_header['class']}, "
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
