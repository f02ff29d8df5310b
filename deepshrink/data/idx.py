"""MNIST / Fashion-MNIST IDX files (LeCun et al. 1998; Xiao et al. 2017), gzip-compressed or raw.

The IDX format: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Images are (N, 28, 28), labels (N,).

Example::

    ds = read_idx_dataset("/usr/share/datasets/fashion-mnist", "fashion-mnist", "test")
    ds.images.shape   # (10000, 1, 28, 28)
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, TensorImageDataset

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (`.gz` or raw) into a numpy array of its declared shape and type."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number {data[:4].hex()}); "
                        "expected MNIST-format files such as train-images-idx3-ubyte.gz")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise UserError(f"{path} is truncated or corrupt: header says {shape} ({expected} bytes of data), "
                        f"file holds {len(data) - offset}; download it again")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def idx_file(root: Path, split: str, kind: str) -> Path | None:
    """The images/labels file of `split` under `root`, gzip or raw, or None."""
    stem = f"{_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):  # a few mirrors rename the dot
        if (root / name).is_file():
            return root / name
    return None


def has_idx(root: Path, split: str) -> bool:
    """True when `root` holds both IDX files of `split`."""
    return idx_file(root, split, "images") is not None and idx_file(root, split, "labels") is not None


def read_idx_dataset(root: str | Path, name: str, split: str) -> TensorImageDataset:
    """The `split` ("train"/"test") of MNIST or Fashion-MNIST found in `root`."""
    root = Path(root)
    images_path, labels_path = idx_file(root, split, "images"), idx_file(root, split, "labels")
    if images_path is None or labels_path is None:
        raise UserError(f"{root} has no {_PREFIX[split]}-images-idx3-ubyte[.gz] / labels file")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{images_path} {images.shape} and {labels_path} {labels.shape} do not match")
    mean, std = STATS[name]
    meta = DatasetMeta(name, split, CLASSES[name], mean, std, augment="none")
    tensor = torch.from_numpy(images.astype(np.uint8, copy=True)).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    return TensorImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), meta)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file, gzip-compressed when `path` ends in `.gz` (for tests/tools)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(header + array.tobytes())
