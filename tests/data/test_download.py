"""Opt-in download against a server on 127.0.0.1: verified checksums, temp file then rename."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from contextlib import contextmanager

import numpy as np
import pytest

from deepshrink.data import download, get_dataset
from deepshrink.data.idx import write_idx
from deepshrink.errors import UserError


@contextmanager
def serve(directory, monkeypatch):
    """Serve `directory` at http://127.0.0.1:PORT and point DEEPSHRINK_MIRROR at it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DEEPSHRINK_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A mirror serving tmp_path/mirror; yields its fashion-mnist folder."""
    mirror = tmp_path / "mirror"
    (mirror / "fashion-mnist").mkdir(parents=True)
    with serve(mirror, monkeypatch):
        yield mirror / "fashion-mnist"


def _publish(folder, monkeypatch, corrupt=False):
    """Write a 4-image test split, register its sha256 as the 'official' checksums."""
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 9]))
    resources = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        resources.append(download.Resource(name, "http://unreachable.invalid/" + name, "sha256", digest, ("test",)))
    if corrupt:
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    monkeypatch.setitem(download.RESOURCES, "fashion-mnist", resources)


def test_download_verifies_and_reads(served, tmp_path, monkeypatch):
    _publish(served, monkeypatch)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="--download"):  # opt-in: nothing fetched without it
        get_dataset("fashion-mnist", "test", root=root)
    ds = get_dataset("fashion-mnist", "test", root=root, download=True)
    assert len(ds) == 4 and ds.targets.tolist() == [0, 1, 2, 9]
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_checksum_mismatch_keeps_nothing(served, tmp_path, monkeypatch):
    _publish(served, monkeypatch, corrupt=True)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="checksum mismatch .*t10k-labels"):
        get_dataset("fashion-mnist", "test", root=root, download=True)
    assert not (root / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in root.iterdir() if ".part" in p.name]  # the temporary file was removed


def test_unreachable_server_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSHRINK_MIRROR", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(UserError, match="cannot download http://127.0.0.1:9/svhn/test_32x32.mat"):
        get_dataset("svhn", "test", root=tmp_path, download=True)


def test_archive_is_verified_then_unpacked(tmp_path, monkeypatch):
    """CIFAR-10 comes as cifar-10-python.tar.gz: fetched, checked, unpacked, then read as python batches."""
    import tarfile

    from deepshrink.data.cifar import write_cifar_batch

    batches = tmp_path / "build" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(batches / name, np.full((2, 3, 32, 32), 9, dtype=np.uint8), [3, 8])
    mirror = tmp_path / "mirror" / "cifar10"
    mirror.mkdir(parents=True)
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    digest = hashlib.md5((mirror / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(download.RESOURCES, "cifar10", [download.Resource(
        "cifar-10-python.tar.gz", "http://unreachable.invalid/c.tgz", "md5", digest, extract=True)])
    with serve(tmp_path / "mirror", monkeypatch):
        ds = get_dataset("cifar10", "test", root=tmp_path / "data", download=True)
    assert len(ds) == 2 and ds.targets.tolist() == [3, 8]
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_official_table_covers_every_downloadable_name():
    from deepshrink.data import DATASETS

    downloadable = {name for name, spec in DATASETS.items() if spec.downloadable}
    assert downloadable == set(download.RESOURCES)
    for resources in download.RESOURCES.values():
        for r in resources:
            assert r.url.startswith(("http://", "https://")) and len(r.digest) == {"md5": 32, "sha256": 64}[r.algorithm]
