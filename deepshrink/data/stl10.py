"""STL-10 binary files (Coates et al. 2011): `stl10_binary/{train,test}_{X,y}.bin`.

`*_X.bin` is uint8 images of 3 x 96 x 96 stored channel by channel, each channel column-major
(the MATLAB layout), so an image is reshaped to (3, 96, 96) and then transposed to (C, H, W).
`*_y.bin` holds one uint8 label per image, 1..10; deepshrink uses 0..9.

Example::

    ds = read_stl10("/data/stl10", "train")   # 5,000 images (3, 96, 96)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, TensorImageDataset

CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SIDE = 96


def find_stl10(root: Path, split: str) -> Path | None:
    """The folder holding `<split>_X.bin` and `<split>_y.bin` (root or root/stl10_binary)."""
    for folder in (root, root / "stl10_binary"):
        if (folder / f"{split}_X.bin").is_file() and (folder / f"{split}_y.bin").is_file():
            return folder
    return None


def read_stl10(root: str | Path, split: str) -> TensorImageDataset:
    """The labelled `split` ("train" 5,000 / "test" 8,000) of STL-10."""
    folder = find_stl10(Path(root), split)
    if folder is None:
        raise UserError(f"{root} has no stl10_binary/{split}_X.bin and {split}_y.bin")
    raw = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
    labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    per_image = 3 * SIDE * SIDE
    if raw.size % per_image or raw.size // per_image != labels.size:
        raise UserError(f"{folder}/{split}_X.bin holds {raw.size} bytes, not {labels.size} images of "
                        f"3x{SIDE}x{SIDE}; the download is truncated")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{folder}/{split}_y.bin has labels outside 1..10")
    # Column-major channels: (N, C, W, H) in memory -> swap the last two axes to (N, C, H, W).
    images = np.ascontiguousarray(raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 1, 3, 2))
    names = folder / "class_names.txt"
    classes = tuple(names.read_text().split()) if names.is_file() else CLASSES
    mean, std = STATS["stl10"]
    meta = DatasetMeta("stl10", split, classes if len(classes) == 10 else CLASSES, mean, std, augment="cifar")
    return TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels), meta)
