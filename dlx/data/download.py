"""Fetching data files safely: pinned hashes, atomic writes, a cross-process lock and
tar extraction that refuses paths outside the target folder, links and devices.

    download_file(urls, dest, md5=...)     # tries each URL until one gives the right bytes
    extract_tar(archive, folder)           # all-or-nothing; refuses unsafe members
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

_CHUNK = 1 << 20
MAX_DOWNLOAD_BYTES = 1 << 30  # no file dlx downloads is larger; pinned sizes are tighter


class DownloadError(OSError):
    """No URL gave the expected file; the message lists what was tried and the manual fix."""


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or is a link or device."""


class DataFormatError(ValueError):
    """A data file is not in the format it claims (truncated, corrupt or not the official file)."""


def default_root() -> Path:
    """The data folder: ``DLX_DATA_DIR`` if set, else ``~/.cache/dlx``."""
    env = os.environ.get("DLX_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dlx"


def file_hash(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = _new_hash(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _new_hash(algorithm: str):
    # MD5 only ever checks the official published digests, never anything secret.
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algorithm)


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str]:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    raise ValueError("download_file needs a pinned hash: pass sha256= or md5=")


# --------------------------------------------------------------------------- lock


@contextlib.contextmanager
def file_lock(path, timeout: float = 3600.0, poll: float = 0.1):
    """Hold an exclusive lock on ``path`` (created, and removed on release) across processes.

    After locking, the lock file is checked to still be the one on disk: a holder that
    unlinks it on release would otherwise let a waiter and a newcomer both proceed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        if _try_lock(fd):
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            _unlock(fd)
        os.close(fd)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"waited {timeout:.0f} s for the lock {path} (another process downloading?); "
                f"if no other dlx process is running, delete that file and retry"
            )
        if not told:
            print(f"waiting for another process to release {path} ...", file=sys.stderr)
            told = True
        time.sleep(poll)
    try:
        yield
    finally:
        if os.name != "nt":  # Windows cannot unlink an open file; the lock file stays there
            with contextlib.suppress(OSError):
                os.unlink(path)
        _unlock(fd)
        os.close(fd)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ----------------------------------------------------------------------- download


class _BadDownload(Exception):
    """One URL failed in a way worth reporting; the next one is tried."""


def download_file(
    urls: str | Sequence[str],
    dest,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    size: int | None = None,
) -> Path:
    """Download ``dest`` from the first of ``urls`` whose bytes match the pinned hash.

    The bytes stream into a temporary file beside ``dest`` and are renamed to ``dest``
    only after the hash matches, so ``dest`` is either absent or complete. A lock file
    makes a second process wait and then reuse the first one's download. An existing
    ``dest`` with the right hash is kept; on failure ``DownloadError`` lists each URL
    with its error, the expected and actual hashes, and where to put the file by hand.
    ``size`` is the pinned file's length in bytes: a server announcing or sending more is
    cut off there (without it, at ``MAX_DOWNLOAD_BYTES``).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("download_file needs at least one URL")
    algorithm, want = _expected(md5, sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.is_file() and file_hash(dest, algorithm) == want:
            return dest
        failures = []
        for url in urls:
            try:
                _fetch(url, dest, algorithm, want, timeout, progress, size)
                return dest
            except _BadDownload as e:
                failures.append(f"  {url}\n      {e}")
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                failures.append(f"  {url}\n      {type(e).__name__}: {e}")
    raise DownloadError(
        f"could not download {dest.name}; tried {len(urls)} URL(s):\n"
        + "\n".join(failures)
        + f"\nexpected {algorithm} {want}."
        f"\nTo install it by hand, fetch {dest.name} from one of the URLs above (any copy "
        f"with that {algorithm}) and put it at {dest}"
        f"\n(or point root= / DLX_DATA_DIR at a data folder that already holds it)."
    )


def _fetch(url, dest: Path, algorithm: str, want: str, timeout: float, progress: bool,
           size: int | None = None) -> None:
    from dlx import __version__

    cap = MAX_DOWNLOAD_BYTES if size is None else int(size)
    of = "of the pinned file" if size is not None else "dlx allows for a download"
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = _new_hash(algorithm)
        got = 0
        req = urllib.request.Request(url, headers={"User-Agent": f"dlx/{__version__}"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
            status = getattr(resp, "status", 200)
            if status != 200:
                raise _BadDownload(f"HTTP status {status}")
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length > cap:
                raise _BadDownload(f"the server announces {length:,} bytes, more than the "
                                   f"{cap:,} bytes {of}; not downloaded")
            bar = _progress_bar(dest.name, length, progress)
            try:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except http.client.IncompleteRead as e:
                        got += len(e.partial)
                        raise _BadDownload(
                            f"truncated: the connection closed after {got} of {length} bytes"
                        ) from None
                    if not chunk:
                        break
                    if got + len(chunk) > cap:
                        raise _BadDownload(f"the server sent more than the {cap:,} bytes {of}; "
                                           f"stopped there")
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        if length is not None and got != length:
            raise _BadDownload(f"truncated: got {got} of {length} bytes")
        actual = h.hexdigest()
        if actual != want:
            raise _BadDownload(f"hash mismatch ({got} bytes): expected {algorithm} {want}, got {actual}")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _progress_bar(name: str, total, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"downloading {name} ...", file=sys.stderr)
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


# ------------------------------------------------------------------------ extract


def _check_member(member: tarfile.TarInfo, archive) -> PurePosixPath:
    name = member.name
    where = f"{archive}: member {name!r}"
    if not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(f"{where} has an absolute path; refusing to extract")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafeArchiveError(f"{where} contains '..'; refusing to extract")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{where} is a link (to {member.linkname!r}); refusing to extract")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{where} is a device, FIFO or other special file; refusing to extract")
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def extract_tar(archive, folder, members: Iterable[str] | None = None) -> list[Path]:
    """Extract ``archive`` (tar, tar.gz, ...) into ``folder``, all or nothing.

    Every member is checked before anything is written: absolute paths, ``..``, symbolic
    and hard links, devices and FIFOs make the whole archive refused with
    ``UnsafeArchiveError``. Files are written into a temporary folder inside ``folder``
    and the top-level entries renamed into place at the end; an entry that already exists
    is left as it is. ``members`` limits extraction to those names. Returns the top-level
    paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = None if members is None else set(members)
    try:
        with tarfile.open(archive, "r:*") as tf:
            entries = [(m, _check_member(m, archive)) for m in tf.getmembers()]
            if wanted is not None:
                entries = [(m, p) for m, p in entries if str(p) in wanted]
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
            try:
                tops = []
                for member, rel in entries:
                    if not rel.parts:
                        continue
                    target = tmp.joinpath(*rel.parts)
                    if rel.parts[0] not in tops:
                        tops.append(rel.parts[0])
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                done = []
                for top in tops:
                    final = folder / top
                    if not final.exists():
                        os.replace(tmp / top, final)
                    done.append(final)
                return done
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(f"{archive}: not a readable tar archive ({e})") from e
