"""An LMDB store of encoded images (JPEG/PNG bytes as they were on disk), one store per split.

Layout of `<root>/<split>.lmdb` (an LMDB environment folder)::

    b"__meta__"    JSON {"format": "deepshrink-lmdb/1", "classes": [...], "count": N}
    b"__labels__"  int64 labels, N * 8 bytes little-endian
    b"%09d" % i    the i-th image's encoded bytes

`write_lmdb` converts an image folder (the bytes are copied, not re-encoded, so nothing is lost);
`read_lmdb` returns an in-memory tensor data set for small images (decoded once, cached like image
folders) and a per-item decoding one for large images.

Example::

    write_lmdb("~/data/cifar10-jpeg", "~/data/cifar10-lmdb")      # train.lmdb, test.lmdb
    ds = get_dataset("lmdb", "test", root="~/data/cifar10-lmdb")
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, LazyImageDataset, TensorImageDataset
from .datasets import SPLITS
from .decode import image_mode_channels, image_size_of
from .folder import EAGER_MAX_SIDE, cached_decode, scan_folder, split_folder

FORMAT = "deepshrink-lmdb/1"


def _lmdb():
    try:
        import lmdb
    except ImportError as exc:
        raise UserError("LMDB stores need the lmdb package: pip install 'deepshrink[lmdb]'") from exc
    return lmdb


def lmdb_path(root: str | Path, split: str) -> Path | None:
    """`<root>/<split>.lmdb` (or `val.lmdb` for test) when it is an LMDB environment, else None."""
    for name in (split, "val") if split == "test" else (split,):
        path = Path(root).expanduser() / f"{name}.lmdb"
        if (path / "data.mdb").is_file():
            return path
    return None


def write_lmdb(src: str | Path, dst: str | Path, splits=SPLITS) -> dict[str, int]:
    """Copy the image folder `src` (`train/`, `test/` or `val/` class folders) into LMDB stores in `dst`.

    Returns {split: number of images written}. Existing stores in `dst` are replaced.
    """
    lmdb = _lmdb()
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    written = {}
    for split in splits:
        folder = split_folder(src, split)
        if folder is None:
            continue
        classes, files, labels, _ = scan_folder(folder)
        total = sum((folder / f).stat().st_size for f in files)
        target = dst / f"{split}.lmdb"
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*.mdb"):
            stale.unlink()
        env = lmdb.open(str(target), map_size=max(1 << 24, int(total * 1.5) + (len(files) << 10)))
        with env.begin(write=True) as txn:
            for i, rel in enumerate(files):
                txn.put(b"%09d" % i, (folder / rel).read_bytes())
            txn.put(b"__labels__", np.asarray(labels, dtype="<i8").tobytes())
            txn.put(b"__meta__", json.dumps({"format": FORMAT, "classes": classes, "count": len(files)}).encode())
        env.close()
        written[split] = len(files)
    if not written:
        raise UserError(f"{src} has no train/, test/ or val/ class folders to convert")
    return written


class _LmdbReader:
    """Item i -> its encoded bytes; opens the environment lazily so worker processes get their own."""

    def __init__(self, path: Path):
        self.path, self._env = path, None

    def __getstate__(self):
        return {"path": self.path, "_env": None}

    def __call__(self, index: int) -> bytes:
        if self._env is None:
            self._env = _lmdb().open(str(self.path), readonly=True, lock=False, readahead=False)
        with self._env.begin() as txn:
            value = txn.get(b"%09d" % index)
        if value is None:
            raise UserError(f"{self.path} has no image {index}; the store is incomplete, convert it again")
        return value


def read_lmdb(root: str | Path, split: str, name: str = "lmdb", image_size: int | None = None,
              decode: str = "auto", use_cache: bool = True) -> TensorImageDataset | LazyImageDataset:
    """The `split` stored in `<root>/<split>.lmdb` by `write_lmdb`."""
    path = lmdb_path(root, split)
    if path is None:
        raise UserError(f"{root} has no {split}.lmdb; create it with `deepshrink data to-lmdb SRC {root}`")
    reader = _LmdbReader(path)
    env = _lmdb().open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        meta_raw, labels_raw = txn.get(b"__meta__"), txn.get(b"__labels__")
        if meta_raw is None or labels_raw is None:
            raise UserError(f"{path} is not a deepshrink LMDB store (no __meta__); convert with `deepshrink data to-lmdb`")
        info = json.loads(meta_raw)
        first = txn.get(b"%09d" % 0)
    env.close()
    targets = torch.from_numpy(np.frombuffer(labels_raw, dtype="<i8").astype(np.int64))
    channels = image_mode_channels(first)
    mean, std = STATS.get(name, STATS["imagenet"] if channels == 3 else ((0.5,), (0.5,)))
    height, width = image_size_of(first)
    eager = decode == "eager" or (decode == "auto" and max(height, width) <= EAGER_MAX_SIDE)
    meta = DatasetMeta(name, split, tuple(info["classes"]), mean, std, augment="cifar" if eager else "imagenet")
    if not eager:
        return LazyImageDataset(reader, targets, meta, image_size or 224)
    stat = (path / "data.mdb").stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    size = (image_size, image_size) if image_size else (height, width)
    sources = [reader(i) for i in range(int(info["count"]))]
    images = cached_decode(sources, key, channels, size, use_cache, str(path))
    return TensorImageDataset(images, targets, meta)
