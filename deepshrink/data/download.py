"""Opt-in download of the official data set files, verified against their published checksums.

Nothing is downloaded unless asked (`download=True`, `--download`). Each file is streamed to a
temporary name beside its target, its md5/sha256 compared with the table below, and only then
renamed into place; archives (CIFAR, STL-10) are then unpacked with tarfile's "data" filter.
`$DEEPSHRINK_MIRROR` replaces every official location: file F of data set D is fetched from
`$DEEPSHRINK_MIRROR/D/F` (used by the tests, which serve files from 127.0.0.1).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Resource:
    """One official file: where it lives, its checksum, and which splits need it."""

    filename: str
    url: str
    algorithm: str  # "md5" or "sha256"
    digest: str
    splits: tuple[str, ...] = ("train", "test")
    extract: bool = False


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"


def _idx(base: str, digests: dict[str, str]) -> list[Resource]:
    return [Resource(f, base + f, "md5", d, ("train",) if f.startswith("train") else ("test",))
            for f, d in digests.items()]


RESOURCES: dict[str, list[Resource]] = {
    "mnist": _idx(_MNIST, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": _idx(_FASHION, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": [Resource("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "md5", "c58f30108f718f92721af3b95e74349a", extract=True)],
    "cifar100": [Resource("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "md5", "eb9058c3a382ffc7106e4002c42a8d85", extract=True)],
    "svhn": [Resource("train_32x32.mat", _SVHN + "train_32x32.mat", "md5", "e26dedcc434d2e4c54c9b2d4a06d8373",
                      ("train",)),
             Resource("test_32x32.mat", _SVHN + "test_32x32.mat", "md5", "eb5a983be6a315427106f1b164d9cef3",
                      ("test",))],
    "stl10": [Resource("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                       "md5", "91f7769df0f17e558f3565bffb0c7dfb", extract=True)],
}


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resource_url(name: str, resource: Resource) -> str:
    """The official URL, or `$DEEPSHRINK_MIRROR/<name>/<filename>` when the mirror is set."""
    mirror = os.environ.get("DEEPSHRINK_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{name}/{resource.filename}" if mirror else resource.url


def fetch(url: str, target: Path, algorithm: str, digest: str, timeout: float = 60.0) -> Path:
    """Download `url` to `target` via a temporary file; rename only when the checksum matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part{os.getpid()}")
    hasher = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                hasher.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot download {url}: {exc}; check the network or set DEEPSHRINK_MIRROR "
                        f"to a mirror, or place the file at {target} yourself") from exc
    if hasher.hexdigest() != digest.lower():
        tmp.unlink(missing_ok=True)
        raise UserError(f"checksum mismatch for {url}: {algorithm} {hasher.hexdigest()}, expected {digest}; "
                        "the download is corrupt or the mirror serves another file. Nothing was kept; retry")
    os.replace(tmp, target)
    return target


def download_dataset(name: str, root: str | Path, split: str = "train") -> Path:
    """Fetch (and unpack) the official files `split` of data set `name` needs into `root`."""
    if name not in RESOURCES:
        raise UserError(f"{name} cannot be downloaded; downloadable: {', '.join(sorted(RESOURCES))}")
    root = Path(root).expanduser()
    for resource in RESOURCES[name]:
        if split not in resource.splits:
            continue
        target = root / resource.filename
        if not (target.is_file() and file_digest(target, resource.algorithm) == resource.digest):
            fetch(resource_url(name, resource), target, resource.algorithm, resource.digest)
        if resource.extract:
            with tarfile.open(target) as tar:
                tar.extractall(root, filter="data")
    return root
