"""Image folders (class sub-folders of JPEG/PNG): cached decode, cache rebuilt on change, lazy mode,
and the real CIFAR-10 JPEG test folder."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepshrink.data import LazyImageDataset, TensorImageDataset, get_dataset
from deepshrink.errors import UserError


def _write_folder(root, split="train", per_class=3, size=(6, 5), fmt="PNG"):
    """class a: pixel value 10*i, class b: 100+10*i; PNG is lossless so values are exact."""
    arrays = {}
    for c, base in (("a", 0), ("b", 100)):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = np.full((*size, 3), base + 10 * i, dtype=np.uint8)
            array[0, 0] = (1, 2, 3)
            Image.fromarray(array).save(root / split / c / f"{i:03d}.{fmt.lower()}", fmt)
            arrays[(c, i)] = array
    return arrays


def test_png_folder_decodes_exactly(tmp_path, private_cache):
    arrays = _write_folder(tmp_path / "ds")
    ds = get_dataset("imagefolder", "train", root=tmp_path / "ds")
    assert isinstance(ds, TensorImageDataset)
    assert ds.classes == ["a", "b"] and ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images.shape == (6, 3, 6, 5) and ds.image_size == (6, 5)
    image, label = ds[4]
    assert label == 1 and torch.equal(image, torch.from_numpy(arrays[("b", 1)]).permute(2, 0, 1))
    assert ds.mean == (0.485, 0.456, 0.406)  # ImageNet statistics for a generic folder


def test_cache_is_reused_and_rebuilt_when_folder_changes(tmp_path, private_cache):
    _write_folder(tmp_path / "ds")
    get_dataset("imagefolder", "train", root=tmp_path / "ds")
    caches = list((private_cache / "folders").glob("*.safetensors"))
    assert len(caches) == 1
    # Poison the cache's pixels: a second read must come from the cache (same file index).
    from safetensors.torch import load_file, save_file
    cached = load_file(caches[0])["images"]
    save_file({"images": torch.zeros_like(cached)}, caches[0])
    assert int(get_dataset("imagefolder", "train", root=tmp_path / "ds").images.sum()) == 0
    # Adding an image changes the index: the folder is decoded again, 7 images, real pixels.
    Image.fromarray(np.full((6, 5, 3), 77, dtype=np.uint8)).save(tmp_path / "ds/train/b/new.png")
    ds = get_dataset("imagefolder", "train", root=tmp_path / "ds")
    assert len(ds) == 7 and int(ds.images.sum()) > 0 and ds.targets.tolist()[-1] == 1


def test_jpeg_test_split_falls_back_to_val(tmp_path, private_cache):
    _write_folder(tmp_path / "ds", split="val", fmt="JPEG", size=(16, 16))
    ds = get_dataset("imagefolder", "test", root=tmp_path / "ds")
    assert len(ds) == 6 and ds.images.shape[1:] == (3, 16, 16)
    # JPEG is lossy, but a flat grey patch survives within a few levels.
    assert abs(int(ds.images[1, 0, 8, 8]) - 10) <= 3


def test_large_images_are_decoded_lazily(tmp_path, private_cache):
    _write_folder(tmp_path / "big", per_class=2, size=(150, 200), fmt="JPEG")
    ds = get_dataset("imagefolder", "train", root=tmp_path / "big", image_size=64)
    assert isinstance(ds, LazyImageDataset) and ds.image_size == 64 and len(ds) == 4
    image, label = ds[3]
    assert image.shape == (3, 150, 200) and image.dtype == torch.uint8 and label == 1
    assert not list((private_cache / "folders").glob("*.safetensors"))  # nothing decoded ahead of time


def test_a_large_folders_file_index_is_reused_until_a_class_folder_changes(tmp_path, private_cache):
    import json

    _write_folder(tmp_path / "big", per_class=2, size=(150, 200), fmt="JPEG")
    get_dataset("imagefolder", "train", root=tmp_path / "big")
    [index] = (private_cache / "folders").glob("index-*.json")
    # Rewrite the cached listing: the next open must come from it (no class folder changed).
    record = json.loads(index.read_text())
    assert record["names"] == [["000.jpeg", "001.jpeg"], ["000.jpeg", "001.jpeg"]]
    record["names"] = [["001.jpeg"], ["000.jpeg", "001.jpeg"]]
    index.write_text(json.dumps(record))
    assert get_dataset("imagefolder", "train", root=tmp_path / "big").targets.tolist() == [0, 1, 1]
    # A file added to a class folder changes that folder: listed again, the new file included.
    Image.fromarray(np.full((150, 200, 3), 77, dtype=np.uint8)).save(tmp_path / "big/train/a/new.jpeg")
    assert get_dataset("imagefolder", "train", root=tmp_path / "big").targets.tolist() == [0, 0, 0, 1, 1]
    # A damaged index is listed again, never trusted.
    index.write_text("{not json")
    assert len(get_dataset("imagefolder", "train", root=tmp_path / "big")) == 5
    assert json.loads(index.read_text())["names"][0] == ["000.jpeg", "001.jpeg", "new.jpeg"]


def test_missing_split_and_empty_folder_are_user_errors(tmp_path, private_cache):
    (tmp_path / "ds/train/a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        get_dataset("imagefolder", "train", root=tmp_path / "ds")
    with pytest.raises(UserError, match="imagefolder \\(test split\\) not found"):
        get_dataset("imagefolder", "test", root=tmp_path / "ds")


def test_real_cifar10_jpeg_test_folder(cifar10_jpeg_root):
    ds = get_dataset("cifar10", "test", root=cifar10_jpeg_root)
    assert len(ds) == 10000 and ds.images.shape == (10000, 3, 32, 32)
    assert ds.class_counts() == [1000] * 10
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.247, 0.243, 0.261)
    # Real photographs: the test set's per-channel means sit near CIFAR-10's published statistics.
    means = (ds.images.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor(ds.mean), atol=0.02)
    assert os.path.samefile(ds.root, cifar10_jpeg_root)


def test_lazy_folder_loader_crops_imagenet_style(tmp_path, private_cache):
    from deepshrink.data import make_loader

    _write_folder(tmp_path / "big", split="train", per_class=3, size=(150, 200), fmt="JPEG")
    ds = get_dataset("imagefolder", "train", root=tmp_path / "big", image_size=64)
    train = make_loader(ds, 4, train=True, seed=0, num_workers=0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    train.set_epoch(0)
    assert torch.equal(next(iter(train))[0], x)  # random-resized-crop parameters are seeded per epoch
    evaluation = make_loader(ds, 6, train=False, num_workers=0)
    xe, ye = next(iter(evaluation))
    assert xe.shape == (6, 3, 64, 64) and ye.tolist() == [0, 0, 0, 1, 1, 1] and len(evaluation) == 1
