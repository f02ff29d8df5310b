"""SVHN cropped digits, `train_32x32.mat` / `test_32x32.mat` (Netzer et al. 2011), read with scipy.

The .mat files hold `X` uint8 (32, 32, 3, N) and `y` (N, 1) with labels 1..10, where 10 means the
digit 0; deepshrink maps 10 -> 0 so label = digit.

Example::

    ds = read_svhn("/data/svhn", "test")   # 26,032 images (3, 32, 32)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, TensorImageDataset


def read_svhn(root: str | Path, split: str) -> TensorImageDataset:
    """The `split` of SVHN from `<root>/<split>_32x32.mat`."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise UserError("reading SVHN .mat files needs scipy: pip install 'deepshrink[svhn]'") from exc
    path = Path(root) / f"{split}_32x32.mat"
    try:
        mat = loadmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for bad files
        raise UserError(f"cannot read {path} as a MATLAB file ({exc}); download it again") from exc
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
        raise UserError(f"{path} lacks SVHN's X (32, 32, 3, N) and y (N, 1) arrays")
    images = np.ascontiguousarray(mat["X"].astype(np.uint8).transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    labels = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores the digit 0 as label 10
    mean, std = STATS["svhn"]
    meta = DatasetMeta("svhn", split, tuple(str(d) for d in range(10)), mean, std, augment="crop")
    return TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels), meta)
