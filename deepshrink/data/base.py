"""The in-memory forms of a data set: decoded once into a uint8 tensor, or decoded per item.

Every data set deepshrink returns carries the same attributes, whatever its on-disk format::

    ds = get_dataset("cifar10", "test")
    ds.images.shape        # (10000, 3, 32, 32) uint8, (N, C, H, W)
    ds.targets             # int64 tensor (N,)
    ds.classes, ds.num_classes, ds.in_channels, ds.image_size, ds.mean, ds.std
    image, label = ds[0]   # uint8 (C, H, W) tensor, int

Small data sets (MNIST ... STL-10) are `TensorImageDataset`s, so an epoch is a few tensor
index operations; large image folders (ImageNet) are `LazyImageDataset`s decoded per item.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Per-channel normalisation statistics of the training splits (0..1 pixel scale).
# The CIFAR-10 values are those the shared ResNet-20 checkpoint was trained with: keep them exact.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class DatasetMeta:
    """What a data set is, independent of its pixels.

    `augment` names the training augmentation that suits it (see `deepshrink.data.transforms`):
    "cifar" (pad-crop + flip), "crop" (pad-crop, no flip: digits must not be mirrored),
    "imagenet" (random-resized-crop + flip) or "none".
    """

    name: str
    split: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "cifar"


DATA_RECORD_KEYS = ("name", "input_shape", "mean", "std", "num_classes")


def data_record(name: str, dataset) -> dict:
    """What a model trained on `dataset` takes, as checkpoints and `.dsz` files record it so that commands
    can default to it: {"name", "input_shape": [C, H, W], "mean", "std", "num_classes"}, JSON values only.

    Example::

        data_record("cifar10", get_dataset("cifar10", "test"))["input_shape"]  # -> [3, 32, 32]
    """
    size = dataset.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return {"name": str(name), "input_shape": [int(dataset.in_channels), int(height), int(width)],
            "mean": [float(v) for v in dataset.mean], "std": [float(v) for v in dataset.std],
            "num_classes": int(dataset.num_classes)}


class _ImageDatasetBase(torch.utils.data.Dataset):
    meta: DatasetMeta
    targets: torch.Tensor
    root = None  # the folder it was read from (set by get_dataset)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def split(self) -> str:
        return self.meta.split

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.meta.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.meta.std

    @property
    def in_channels(self) -> int:
        return len(self.meta.mean)

    def __len__(self) -> int:
        return int(self.targets.numel())

    def class_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, image_size={self.image_size})")


class TensorImageDataset(_ImageDatasetBase):
    """A data set held as one uint8 tensor `images` (N, C, H, W) plus int64 `targets` (N,).

    Example::

        ds = TensorImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4) % 2,
                                DatasetMeta("toy", "train", ("a", "b"), (0.5,), (0.5,)))
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, meta: DatasetMeta):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if targets.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but targets of shape {tuple(targets.shape)}")
        if images.shape[1] != len(meta.mean):
            raise ValueError(f"images have {images.shape[1]} channels, mean has {len(meta.mean)}")
        self.images = images.contiguous()
        self.targets = targets
        self.meta = meta

    @property
    def image_size(self) -> int | tuple[int, int]:
        """Side of the (square) images, or (H, W) when they are not square."""
        h, w = self.images.shape[-2:]
        return h if h == w else (h, w)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def select(self, indices: torch.Tensor) -> "TensorImageDataset":
        """A new data set of the images at `indices` (same classes and statistics)."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        chosen = TensorImageDataset(self.images[indices], self.targets[indices], self.meta)
        chosen.root = self.root
        return chosen


class LazyImageDataset(_ImageDatasetBase):
    """A data set decoded one item at a time (large image folders, LMDB stores of ImageNet).

    `read(i)` returns the encoded bytes or path of item i; `image_size` is the side the loader
    crops to (224 for ImageNet-style training). Items keep their own size: (C, H_i, W_i) uint8.
    """

    def __init__(self, read, targets: torch.Tensor, meta: DatasetMeta, image_size: int = 224):
        from .decode import decode_image  # noqa: F401  (fail early if Pillow is missing)

        self._read = read
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.meta = meta
        self._image_size = int(image_size)

    @property
    def image_size(self) -> int:
        return self._image_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from .decode import decode_image

        return decode_image(self._read(index), channels=self.in_channels), int(self.targets[index])

    def select(self, indices: torch.Tensor) -> "LazyImageDataset":
        """A new data set of the items at `indices`."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        chosen = LazyImageDataset(_Reindexed(self._read, indices.tolist()), self.targets[indices], self.meta,
                                  self._image_size)
        chosen.root = self.root
        return chosen


class _Reindexed:
    """`read` seen through an index list (a class, not a lambda, so loader workers can pickle it)."""

    def __init__(self, read, indices: list[int]):
        self.read, self.indices = read, indices

    def __call__(self, index: int):
        return self.read(self.indices[index])
