"""STL-10 binary: column-major 96x96 channels, labels 1..10 -> 0..9."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deepshrink.data import get_dataset
from deepshrink.errors import UserError


def test_stl10_column_major_layout(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
    # On disk each channel is stored column by column (MATLAB order): (N, C, W, H) in C order.
    images.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")
    np.array([1, 10, 4], dtype=np.uint8).tofile(folder / "train_y.bin")
    ds = get_dataset("stl10", "train", root=tmp_path)
    assert ds.images.shape == (3, 3, 96, 96) and ds.image_size == 96
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.targets.tolist() == [0, 9, 3] and ds.classes[9] == "truck"


def test_stl10_truncated_file(tmp_path):
    np.zeros(3 * 96 * 96 + 5, dtype=np.uint8).tofile(tmp_path / "test_X.bin")
    np.array([1], dtype=np.uint8).tofile(tmp_path / "test_y.bin")
    with pytest.raises(UserError, match="truncated"):
        get_dataset("stl10", "test", root=tmp_path)
