"""SVHN `*_32x32.mat` through scipy: (32, 32, 3, N) layout and label 10 -> digit 0."""
from __future__ import annotations

import numpy as np
import torch
from scipy.io import savemat

from deepshrink.data import get_dataset


def test_svhn_mat_layout_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)  # (N, C, H, W)
    labels = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": labels})  # (H, W, C, N)
    ds = get_dataset("svhn", "test", root=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32)
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.targets.tolist() == [0, 1, 9, 0, 5]
    assert ds.classes[0] == "0" and ds.in_channels == 3
