"""Limited-data subsets: stratified, seeded, saved as an index file, reused, resampled on request."""
from __future__ import annotations

import json

import pytest
import torch

from deepshrink.data import DatasetMeta, TensorImageDataset, get_dataset, subset
from deepshrink.errors import UserError


def _toy(counts=(50, 30, 20)):
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    targets = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(len(targets)).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8)  # image i: value i
    return TensorImageDataset(images.contiguous(), targets, DatasetMeta("toy", "train", ("a", "b", "c"), (0.5,), (0.5,)))


def test_ratio_is_stratified(private_cache):
    sub = subset(_toy(), ratio=0.1, seed=0)
    assert sub.class_counts() == [5, 3, 2] and len(sub) == 10
    assert sub.classes == ["a", "b", "c"] and sub.mean == (0.5,)


def test_per_class_count_and_images_follow_their_labels(private_cache):
    ds = _toy()
    sub = subset(ds, per_class=4, seed=1)
    assert sub.class_counts() == [4, 4, 4]
    for image, label in (sub[i] for i in range(len(sub))):
        assert int(ds.targets[int(image[0, 0, 0])]) == label  # image value = its index in ds


def test_seeded_reproducible_and_saved(private_cache):
    ds = _toy()
    a, b = subset(ds, ratio=0.2, seed=5), subset(ds, ratio=0.2, seed=5)
    assert torch.equal(a.images, b.images)
    c = subset(ds, ratio=0.2, seed=6)
    assert not torch.equal(a.images, c.images)
    files = sorted((private_cache / "subsets").glob("*.json"))
    assert len(files) == 2
    record = json.loads(files[0].read_text())
    assert len(record["indices"]) == 20 and record["dataset"] == "toy"


def test_index_file_is_reused_and_resample_replaces_it(tmp_path, private_cache):
    ds = _toy()
    index_file = tmp_path / "calib.json"
    first = subset(ds, ratio=0.1, seed=0, index_file=index_file)
    saved = json.loads(index_file.read_text())["indices"]
    # Hand-edit the file: the next call must use exactly what the file says.
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()), "indices": [0, 1, 2]}))
    assert len(subset(ds, ratio=0.1, seed=0, index_file=index_file)) == 3
    fresh = subset(ds, ratio=0.1, seed=0, index_file=index_file, resample=True)
    assert fresh.class_counts() == [5, 3, 2]
    new = json.loads(index_file.read_text())["indices"]
    assert new != [0, 1, 2] and len(new) == 10
    assert torch.equal(subset(ds, ratio=0.1, index_file=index_file).images, fresh.images)
    assert len(first) == len(saved) == 10


def test_index_file_from_another_dataset_is_refused(tmp_path, private_cache):
    index_file = tmp_path / "calib.json"
    subset(_toy(), ratio=0.1, index_file=index_file)
    with pytest.raises(UserError, match="another data set"):
        subset(_toy((10, 10, 10)), ratio=0.1, index_file=index_file)


def test_bad_requests():
    with pytest.raises(UserError, match="exactly one"):
        subset(_toy(), ratio=0.1, per_class=2)
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        subset(_toy(), ratio=1.5)
    with pytest.raises(UserError, match="only 20 images"):
        subset(_toy(), per_class=25)


def test_one_percent_of_real_fashion_mnist(fashion_mnist_root, private_cache):
    calib = subset(get_dataset("fashion-mnist", "train", root=fashion_mnist_root), ratio=0.01)
    assert len(calib) == 600 and calib.class_counts() == [60] * 10
