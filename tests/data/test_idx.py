"""MNIST/Fashion-MNIST IDX reader: small files written in the real format, and the real Fashion-MNIST."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deepshrink.data import get_dataset
from deepshrink.data.idx import read_idx, write_idx
from deepshrink.errors import UserError


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip_gzip_and_raw(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)
    # The header is big-endian: magic 0x00000803 then the three dimensions.
    raw = read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    assert raw.shape == (7, 28, 28) and np.array_equal(raw, images)
    ds = get_dataset("mnist", "test", root=tmp_path)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == labels.tolist()
    assert torch.equal(ds[2][0][0], torch.from_numpy(images[2])) and ds[2][1] == 4
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.mean, ds.std) == (10, 1, 28, (0.1307,), (0.3081,))


def test_idx_header_bytes_match_the_spec(tmp_path):
    write_idx(tmp_path / "x-idx1-ubyte", np.arange(5, dtype=np.uint8))
    data = (tmp_path / "x-idx1-ubyte").read_bytes()
    assert data[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 5]) and data[8:] == bytes(range(5))


def test_truncated_and_foreign_files_are_user_errors(tmp_path):
    write_idx(tmp_path / "a", np.zeros((2, 3, 3), dtype=np.uint8))
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-4])
    (tmp_path / "c").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "b")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "c")


def test_real_fashion_mnist(fashion_mnist_root):
    train = get_dataset("fashion-mnist", "train", root=fashion_mnist_root)
    test = get_dataset("fashion-mnist", "test", root=fashion_mnist_root)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert test.classes[9] == "Ankle boot" and test.mean == (0.2860,)
    # The normalisation constants are the training set's own statistics.
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - 0.2860) < 1e-3 and abs(pixels.std().item() - 0.3530) < 1e-3
