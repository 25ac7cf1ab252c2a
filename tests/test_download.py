"""The downloader and safe extraction, against a local HTTP server on 127.0.0.1 serving
small archives in the official formats: good, truncated, wrong hash, malicious members,
unreachable. Every failure must leave no partial file behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_data import (  # the official-format writers
    cifar_py_files,
    idx_bytes,
    make_cifar,
    write_tar,
)

from dlx.data import (
    CIFAR10,
    MNIST,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    extract_tar,
)


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


class Server:
    """Serves ``files[path] = bytes``; ``truncate`` paths send half of what they announce,
    ``slow`` paths wait before answering; ``hits`` counts GETs per path."""

    def __init__(self):
        self.files, self.truncate, self.slow, self.hits = {}, set(), set(), {}
        self.unannounced = set()  # paths sent without a Content-Length (until the connection closes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if self.path in server.slow:
                    time.sleep(0.3)
                self.send_response(200)
                if self.path in server.unannounced:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.tar.gz"


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


BODY = gzip.compress(b"the official bytes " * 2000)


def test_download_good_file(server, tmp_path):
    server.files["/good.gz"] = BODY
    dest = tmp_path / "d" / "good.gz"
    assert download_file(server.url + "/good.gz", dest, md5=md5(BODY), progress=False) == dest
    assert dest.read_bytes() == BODY
    assert leftovers(dest.parent) == ["good.gz"]  # no temp file, no lock file
    # Present with the right hash: kept, not fetched again (SHA-256 pins work too).
    hits = server.hits["/good.gz"]
    download_file(server.url + "/good.gz", dest, sha256=hashlib.sha256(BODY).hexdigest())
    assert server.hits["/good.gz"] == hits


def test_download_falls_back_to_the_next_url(server, tmp_path, dead_url):
    server.files["/mirror/f.gz"] = BODY
    urls = [dead_url, server.url + "/missing.gz", server.url + "/mirror/f.gz"]
    dest = download_file(urls, tmp_path / "f.gz", md5=md5(BODY), progress=False)
    assert dest.read_bytes() == BODY


def test_download_truncated_leaves_nothing(server, tmp_path):
    server.files["/cut.gz"] = BODY
    server.truncate.add("/cut.gz")
    with pytest.raises(DownloadError) as e:
        download_file(server.url + "/cut.gz", tmp_path / "cut.gz", md5=md5(BODY), progress=False)
    assert "truncated" in str(e.value) and server.url + "/cut.gz" in str(e.value)
    assert leftovers(tmp_path) == []


def test_download_wrong_hash_names_expected_and_actual(server, tmp_path):
    server.files["/tampered.gz"] = BODY + b"x"
    want = md5(BODY)
    dest = tmp_path / "tampered.gz"
    with pytest.raises(DownloadError) as e:
        download_file(server.url + "/tampered.gz", dest, md5=want, progress=False)
    msg = str(e.value)
    assert want in msg and md5(BODY + b"x") in msg and str(dest) in msg and "by hand" in msg
    assert leftovers(tmp_path) == []


def test_download_unreachable_lists_urls_tried(tmp_path, dead_url):
    urls = [dead_url, dead_url.replace("gone", "also-gone")]
    with pytest.raises(DownloadError) as e:
        download_file(urls, tmp_path / "x.tar.gz", md5="0" * 32, timeout=5, progress=False)
    msg = str(e.value)
    assert all(u in msg for u in urls) and "tried 2 URL(s)" in msg
    assert leftovers(tmp_path) == []


def test_two_downloaders_share_one_download(server, tmp_path):
    server.files["/shared.gz"] = BODY
    server.slow.add("/shared.gz")
    dest, results = tmp_path / "shared.gz", []

    def fetch():
        results.append(download_file(server.url + "/shared.gz", dest, md5=md5(BODY), progress=False))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [dest, dest] and dest.read_bytes() == BODY
    assert server.hits["/shared.gz"] == 1
    assert leftovers(tmp_path) == ["shared.gz"]


# ------------------------------------------------------------------------ extraction


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        tf.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buf.getvalue()


def _member(name, kind=tarfile.REGTYPE, link="", size=0):
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, link, size
    return m


MALICIOUS = {
    "dotdot": (_member("cifar-10-batches-py/../../evil.txt", size=4), "'..'"),
    "absolute": (_member("/tmp/dlx-evil-abs.txt", size=4), "absolute"),
    "symlink": (
        _member("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, "/etc/passwd"),
        "link",
    ),
    "hardlink": (_member("cifar-10-batches-py/h", tarfile.LNKTYPE, "/etc/passwd"), "link"),
    "device": (_member("cifar-10-batches-py/dev", tarfile.CHRTYPE), "device"),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_extract_refuses_malicious_members(tmp_path, case):
    member, words = MALICIOUS[case]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_with(member, b"evil" if member.isfile() else b""))
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=words):
        extract_tar(archive, out)
    assert leftovers(out) == []  # all or nothing: not even the harmless member
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/dlx-evil-abs.txt").exists()


def test_extract_is_all_or_nothing_and_keeps_existing(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    write_tar(archive, [("top/a.txt", b"a"), ("top/sub/b.txt", b"b")])
    out = tmp_path / "out"
    assert extract_tar(archive, out) == [out / "top"]
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"b"
    (out / "top" / "a.txt").write_bytes(b"mine")
    extract_tar(archive, out)  # an existing entry is left as it is
    assert (out / "top" / "a.txt").read_bytes() == b"mine"
    assert leftovers(out) == ["top"]


# ---------------------------------------------------------------- data sets download


def test_cifar10_download_extracts_and_reads(server, tmp_path, dead_url, monkeypatch):
    train, test = make_cifar()
    buf = tmp_path / "src.tar.gz"
    write_tar(buf, cifar_py_files(train, test))
    body = buf.read_bytes()
    server.files["/kriz/cifar-10-python.tar.gz"] = body
    monkeypatch.setattr(CIFAR10, "mirrors", [dead_url.rsplit("/", 1)[0] + "/", server.url + "/kriz/"])
    monkeypatch.setattr(CIFAR10, "resources", {"cifar-10-python.tar.gz": md5(body)})
    root = tmp_path / "data"
    ds = CIFAR10(root, train=False, download=True)
    np.testing.assert_array_equal(ds.targets, test[1])
    folder = root / "cifar10"
    assert leftovers(folder) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert ds.source == folder / "cifar-10-batches-py"


def test_cifar10_download_refuses_a_malicious_archive(server, tmp_path, monkeypatch):
    body = _tar_with(MALICIOUS["symlink"][0])
    server.files["/evil/cifar-10-python.tar.gz"] = body
    monkeypatch.setattr(CIFAR10, "mirrors", [server.url + "/evil/"])
    monkeypatch.setattr(CIFAR10, "resources", {"cifar-10-python.tar.gz": md5(body)})
    with pytest.raises(UnsafeArchiveError, match="link"):
        CIFAR10(tmp_path, download=True)
    assert leftovers(tmp_path / "cifar10") == ["cifar-10-python.tar.gz"]


def test_mnist_download(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y = np.array([3, 1, 4], np.uint8)
    sums = {}
    for name, a in (("t10k-images-idx3-ubyte.gz", x), ("t10k-labels-idx1-ubyte.gz", y)):
        body = gzip.compress(idx_bytes(a))
        server.files[f"/mnist/{name}"] = body
        sums[name] = md5(body)
    monkeypatch.setattr(MNIST, "mirrors", [server.url + "/mnist/"])
    monkeypatch.setattr(MNIST, "resources", {**MNIST.resources, **sums})
    ds = MNIST(tmp_path, train=False, download=True)
    np.testing.assert_array_equal(ds.data, x)
    assert ds.targets.tolist() == [3, 1, 4]
    assert leftovers(tmp_path / "mnist") == sorted(sums)
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz"):
        MNIST(tmp_path, train=True, download=True)  # not on the server: clear error
    assert leftovers(tmp_path / "mnist") == sorted(sums)


def test_downloads_are_capped_at_the_pinned_size(server, tmp_path, monkeypatch):
    """A server announcing, or sending unannounced, more than the pinned file's size is cut
    off there: nothing is kept, and the error says why."""
    server.files["/big.gz"] = server.files["/quiet.gz"] = BODY
    server.unannounced.add("/quiet.gz")
    for path in ("/big.gz", "/quiet.gz"):
        with pytest.raises(DownloadError, match=r"more than the [\d,]+ (bytes of the )?pinned"):
            download_file(server.url + path, tmp_path / "f.gz", md5=md5(BODY), size=len(BODY) - 100,
                          progress=False)
        assert leftovers(tmp_path) == []
    download_file(server.url + "/quiet.gz", tmp_path / "f.gz", md5=md5(BODY), size=len(BODY),
                  progress=False)  # the exact size passes
    import dlx.data.download as D

    monkeypatch.setattr(D, "MAX_DOWNLOAD_BYTES", 100)  # no pinned size: the global cap
    with pytest.raises(DownloadError, match="more than the 100 "):
        download_file(server.url + "/quiet.gz", tmp_path / "g.gz", md5=md5(BODY), progress=False)
    assert set(MNIST.sizes) == set(MNIST.resources) and set(CIFAR10.sizes) == set(CIFAR10.resources)
