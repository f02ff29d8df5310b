"""Image folders: `<root>/<split>/<class>/<image>.{jpg,png,...}`, the ImageNet / torchvision layout.

Classes are the sub-folder names in sorted order (label i = i-th name). Small images (sides up to
128 pixels, e.g. the CIFAR-10 JPEG copy) are decoded once into a uint8 tensor that is cached on disk
as safetensors, keyed by a hash of the folder's file index (names, sizes, modification times): the
cache is rebuilt as soon as a file is added, removed or changed. Large images (ImageNet) stay on
disk and are decoded per item, and only the list of files is cached (`index_folder`): reopening a tree
of a million files then reads one index file and stats its class folders, instead of listing and
statting every image (the `folder_io` measure of the bench suite `resnet50-imagenet-like` times both).

Example::

    ds = read_image_folder("~/.cache/deepshrink/cifar10-jpeg", "test", name="cifar10")
    len(ds), ds.images.shape   # 10000, (10000, 3, 32, 32)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .base import STATS, DatasetMeta, LazyImageDataset, TensorImageDataset
from .decode import IMAGE_SUFFIXES, decode_all, image_mode_channels, image_size_of
from .roots import cache_dir

EAGER_MAX_SIDE = 128  # images up to this side are decoded once and kept in memory


def split_folder(root: str | Path, split: str) -> Path | None:
    """`root/<split>`, with ImageNet's `val` standing in for `test`; None when absent."""
    root = Path(root).expanduser()
    for name in (split, "val") if split == "test" else (split,):
        if (root / name).is_dir():
            return root / name
    return None


def _classes(folder: Path) -> list[str]:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image>.jpg")
    return classes


def _no_images(folder: Path) -> UserError:
    return UserError(f"{folder} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")


def scan_folder(folder: Path) -> tuple[list[str], list[str], list[int], str]:
    """(classes, relative file paths, labels, index hash) of an image folder, in a stable order; the
    hash covers every file's name, size and modification time."""
    classes = _classes(folder)
    files, labels = [], []
    digest = hashlib.sha256()
    for label, cls in enumerate(classes):
        entries = sorted((e for e in os.scandir(folder / cls)
                          if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.name)
        for entry in entries:
            stat = entry.stat()
            rel = f"{cls}/{entry.name}"
            files.append(rel)
            labels.append(label)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if not files:
        raise _no_images(folder)
    return classes, files, labels, digest.hexdigest()


def _fingerprint(folder: Path, classes: list[str]) -> list:
    """What changes when a file is added to, removed from or renamed in any class folder: the folders'
    names, inodes and modification times (a file rewritten in place changes none of them)."""
    stats = [os.stat(folder / cls) for cls in classes]
    return [str(folder.resolve()), classes, [[s.st_ino, s.st_mtime_ns] for s in stats]]


def index_folder(folder: Path, use_cache: bool = True) -> tuple[list[str], list[str], list[int]]:
    """(classes, relative file paths, labels) as `scan_folder` lists them, read from a cached index
    while no class folder changed (`_fingerprint`); a changed tree is listed again and re-cached."""
    classes = _classes(folder)
    fingerprint = _fingerprint(folder, classes)
    cache = cache_dir() / "folders" / f"index-{hashlib.sha256(fingerprint[0].encode()).hexdigest()[:24]}.json"
    if use_cache and cache.is_file():
        try:
            record = json.loads(cache.read_text())
            if record["fingerprint"] == fingerprint:
                return _listing(classes, record["names"])
        except (OSError, ValueError, KeyError, TypeError):  # a damaged index is rebuilt, never trusted
            pass
    names = [sorted(e.name for e in os.scandir(folder / cls) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
             for cls in classes]
    if not any(names):
        raise _no_images(folder)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "names": names}))
        os.replace(tmp, cache)  # atomic, as for the decoded-image cache
    return _listing(classes, names)


def _listing(classes: list[str], names: list[list[str]]) -> tuple[list[str], list[str], list[int]]:
    """names[label] = that class's file names -> (classes, relative paths, labels)."""
    return (classes, [f"{cls}/{n}" for cls, group in zip(classes, names) for n in group],
            [label for label, group in enumerate(names) for _ in group])


def read_image_folder(root: str | Path, split: str, name: str = "imagefolder", *, image_size: int | None = None,
                      decode: str = "auto", use_cache: bool = True) -> TensorImageDataset | LazyImageDataset:
    """The `split` of the image folder at `root` as a data set.

    `decode`: "eager" (decode all into memory, resizing to the first image's size or `image_size`),
    "lazy" (decode per item), or "auto" (eager when images are at most 128 pixels a side).
    `name` picks the normalisation statistics ("cifar10" uses CIFAR-10's; others ImageNet's).
    """
    folder = split_folder(root, split)
    if folder is None:
        raise UserError(f"{Path(root).expanduser()} has no '{split}' folder; expected "
                        f"{root}/{split}/<class>/<image>.jpg (ImageNet layout; 'val' also works for test)")
    classes, files, labels = index_folder(folder, use_cache)
    first = folder / files[0]
    channels = 1 if name in ("mnist", "fashion-mnist") else image_mode_channels(first)
    mean, std = STATS.get(name, STATS["imagenet"] if channels == 3 else ((0.5,), (0.5,)))
    height, width = image_size_of(first)
    eager = decode == "eager" or (decode == "auto" and max(height, width) <= EAGER_MAX_SIDE)
    size = (image_size, image_size) if image_size else (height, width)
    augment = "cifar" if eager and max(size) <= EAGER_MAX_SIDE else "imagenet"
    meta = DatasetMeta(name, split, tuple(classes), mean, std, augment=augment)
    targets = torch.tensor(labels, dtype=torch.int64)
    if not eager:
        return LazyImageDataset(_FolderReader(folder, files), targets, meta, image_size or 224)
    classes, files, labels, key = scan_folder(folder)  # every file's size and time: the decoded cache's key
    targets = torch.tensor(labels, dtype=torch.int64)
    images = cached_decode([str(folder / f) for f in files], key, channels, size, use_cache, str(folder))
    return TensorImageDataset(images, targets, meta)


class _FolderReader:
    """Item i -> its file path (picklable, for loader worker processes)."""

    def __init__(self, folder: Path, files: list[str]):
        self.folder, self.files = folder, files

    def __call__(self, index: int) -> Path:
        return self.folder / self.files[index]


def cached_decode(sources: list, key: str, channels: int, size: tuple[int, int], use_cache: bool = True,
                  origin: str = "") -> torch.Tensor:
    """Decode `sources` (paths or bytes) once; later calls with the same `key` read the safetensors cache.

    `key` must change whenever the sources do (a hash of names, sizes and modification times).
    """
    tag = hashlib.sha256(f"{key}|{channels}|{size}".encode()).hexdigest()[:24]
    cache = cache_dir() / "folders" / f"{tag}.safetensors"
    if use_cache and cache.is_file():
        try:
            images = load_file(cache)["images"]
            if images.shape == (len(sources), channels, *size):
                return images
        except Exception:  # a damaged cache is rebuilt, never trusted  # noqa: BLE001
            pass
    images = decode_all(sources, channels, size)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        save_file({"images": images}, tmp, metadata={"origin": origin, "n": str(len(sources)),
                                                     "index": json.dumps(key)})
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old file or the whole new one
    return images
