"""`get_dataset(name, split)`: one entry point over every supported data set and on-disk format.

Each name is a `DatasetSpec`: how to recognise its files in a folder (`probe`), how to read them
(`read`), what the files are called (for the not-found message) and whether it can be downloaded.

Example::

    train = get_dataset("fashion-mnist", "train")                 # Debian's copy, found by itself
    test = get_dataset("cifar10", "test", root="~/.cache/deepshrink/cifar10-jpeg")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, TensorImageDataset
from .folder import read_image_folder, split_folder
from .idx import has_idx, read_idx_dataset
from .roots import cache_dir, find_root

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one named data set."""

    name: str
    probe: Callable[[Path, str], bool]
    read: Callable[..., object]
    expected: str
    aliases: tuple[str, ...] = ()
    downloadable: bool = False
    needs_root: bool = True
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) of every image, where the format fixes it


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a data set name (plugins may add their own)."""
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Every name `get_dataset` accepts."""
    return sorted(DATASETS)


def canonical_name(name: str) -> str:
    """The registered name `name` spells (`CIFAR-10` -> `cifar10`); UserError listing the names if none."""
    key = str(name).lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
           "stl-10": "stl10", "image-folder": "imagefolder"}.get(key, key)
    if key not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(list_datasets())}")
    return key


def check_available(name: str, root: str | Path | None = None, download: bool = False) -> None:
    """Raise now, with the not-found message `get_dataset` would give mid-run, when a split of `name` is in
    none of the places searched and cannot be downloaded. Reads no images.

    Example::

        check_available("fashion-mnist")  # UserError naming the folders searched and the fixes, if absent
    """
    spec = DATASETS[canonical_name(name)]
    if not spec.needs_root or (download and spec.downloadable):
        return
    for split in SPLITS:
        find_root(spec.name, split, spec.probe, root, spec.aliases, spec.expected, download_hint=spec.downloadable)


def get_dataset(name: str, split: str = "train", root: str | Path | None = None, download: bool = False,
                **options):
    """Data set `name`, split "train" or "test", read from `root` or found on the search path.

    With `download=True`, a data set that is not found anywhere is fetched from its official
    location (or `$DEEPSHRINK_MIRROR`) into `root` (default `~/.cache/deepshrink/<name>`), checksums
    verified. `options` go to the reader (e.g. `image_size=`, `decode="lazy"` for image folders).
    Returns a data set with `.targets`, `.classes`, `.num_classes`, `.in_channels`, `.image_size`,
    `.mean`, `.std`; `ds[i]` is (uint8 (C, H, W) tensor, int label).
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} of {key}; choose 'train' or 'test'")
    spec = DATASETS[key]
    if not spec.needs_root:
        dataset = spec.read(None, split, **options)
        dataset.root = None
        return dataset
    try:
        found = find_root(key, split, spec.probe, root, spec.aliases, spec.expected,
                          download_hint=spec.downloadable and not download)
    except UserError:
        if not (download and spec.downloadable):
            raise
        from .download import download_dataset

        target = Path(root).expanduser() if root is not None else cache_dir() / key
        download_dataset(key, target, split)
        found = find_root(key, split, spec.probe, target, (), spec.expected, download_hint=False)
    dataset = spec.read(found, split, **options)
    dataset.root = found  # where it was read from (shown by `deepshrink data info`)
    return dataset


# ---------------------------------------------------------------- the built-in data sets
def _folder_probe(root: Path, split: str) -> bool:
    folder = split_folder(root, split)
    return folder is not None and any(p.is_dir() for p in folder.iterdir())


def _idx_spec(name: str) -> DatasetSpec:
    return DatasetSpec(name, has_idx, lambda root, split: read_idx_dataset(root, name, split),
                       "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.gz (IDX files)",
                       downloadable=True, input_shape=(1, 28, 28))


def _cifar_spec(name: str, batches_dir: str, jpeg_dir: str) -> DatasetSpec:
    from . import cifar

    def probe(root: Path, split: str) -> bool:
        return cifar.find_batches(root, name, split) is not None or _folder_probe(root, split)

    def read(root: Path, split: str, **options):
        if cifar.find_batches(root, name, split) is not None:
            return cifar.read_cifar(root, name, split)
        return read_image_folder(root, split, name=name, **options)

    return DatasetSpec(name, probe, read, f"{batches_dir}/ (python batches) or train/ and test/ class folders",
                       aliases=(batches_dir, jpeg_dir), downloadable=True, input_shape=(3, 32, 32))


def _read_svhn(root: Path, split: str):
    from .svhn import read_svhn

    return read_svhn(root, split)


def _read_stl10(root: Path, split: str):
    from .stl10 import read_stl10

    return read_stl10(root, split)


def _probe_svhn(root: Path, split: str) -> bool:
    return (root / f"{split}_32x32.mat").is_file()


def _probe_stl10(root: Path, split: str) -> bool:
    from .stl10 import find_stl10

    return find_stl10(root, split) is not None


def _probe_lmdb(root: Path, split: str) -> bool:
    from .lmdb_store import lmdb_path

    return lmdb_path(root, split) is not None


def _read_lmdb(root: Path, split: str, **options):
    from .lmdb_store import read_lmdb

    return read_lmdb(root, split, **options)


def read_digits(root, split: str) -> TensorImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255); the first 1,437 are "train".

    A tiny real data set for fast tests; normalisation statistics are those of the train part.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UserError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)  # (N,1,8,8)
    targets = torch.from_numpy(bunch.target).to(torch.int64)
    n_train = 1437
    train = images[:n_train].to(torch.float32) / 255.0
    meta = DatasetMeta("digits", split, tuple(str(d) for d in range(10)),
                       (round(float(train.mean()), 4),), (round(float(train.std()), 4),), augment="none")
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    return TensorImageDataset(images[part], targets[part], meta)


register_dataset(_idx_spec("mnist"))
register_dataset(_idx_spec("fashion-mnist"))
register_dataset(_cifar_spec("cifar10", "cifar-10-batches-py", "cifar10-jpeg"))
register_dataset(_cifar_spec("cifar100", "cifar-100-python", "cifar100-jpeg"))
register_dataset(DatasetSpec("svhn", _probe_svhn, _read_svhn, "train_32x32.mat / test_32x32.mat",
                             downloadable=True, input_shape=(3, 32, 32)))
register_dataset(DatasetSpec("stl10", _probe_stl10, _read_stl10,
                             "stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin", downloadable=True,
                             input_shape=(3, 96, 96)))
register_dataset(DatasetSpec("imagefolder", _folder_probe,
                             lambda root, split, **options: read_image_folder(root, split, **options),
                             "train/<class>/*.jpg and test/ (or val/) class folders"))
register_dataset(DatasetSpec("lmdb", _probe_lmdb, _read_lmdb, "train.lmdb and test.lmdb (deepshrink data to-lmdb)"))
register_dataset(DatasetSpec("digits", lambda root, split: True, read_digits, "", needs_root=False,
                             input_shape=(1, 8, 8)))

__all__ = ["DATASETS", "DatasetSpec", "STATS", "canonical_name", "check_available", "get_dataset", "list_datasets",
           "register_dataset"]
