"""`make_loader`: batches of (float32 normalised NCHW, int64 labels), reproducible, DDP-aware.

For data sets held in memory (`TensorImageDataset`) a batch is one index operation plus batched
augmentation on uint8 tensors, so the loader runs far faster than the models it feeds. Large image
folders (`LazyImageDataset`) are decoded per item in worker processes.

Reproducibility: epoch e draws its permutation and every augmentation parameter from a generator
seeded with (seed, e). Parameters belong to positions in the epoch's global permutation, and rank r
of `world_size` takes positions r, r + world_size, ... (as `DistributedSampler`), so 2 processes with
batch B/2 see exactly the images, crops and flips that 1 process with batch B sees. An evaluation
loader (`train=False`) is split the same way but not padded, so the shards hold every image exactly
once and `deepshrink.engine.evaluate` can add their counts. `resume_at(k)` makes the next pass start at
its batch k, with the very batches an uninterrupted pass yields from there (a run resumed mid-epoch).

Example::

    loader = make_loader(get_dataset("cifar10", "train"), 128, train=True, seed=0)
    for epoch in range(10):
        loader.set_epoch(epoch)
        for images, labels in loader:   # (128, 3, 32, 32) float32, (128,) int64
            ...
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .base import LazyImageDataset, TensorImageDataset
from .transforms import (default_padding, hflip, normalize, pad_crop, random_resized_crop, resize,
                         resize_center_crop)

POLICIES = ("cifar", "crop", "imagenet", "none")


@contextmanager
def _one_thread():
    """Run batch assembly on one intra-op thread, then restore the caller's setting.

    The copies are small and memory-bound: on a busy 2-core machine letting them use 2 threads made
    them 30x slower (threads waiting on each other), while 1 thread assembles ~80,000 CIFAR images/s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


class _LoaderBase:
    def __init__(self, dataset, batch_size: int, train: bool, seed: int, augment, drop_last, rank: int,
                 world_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        policy = dataset.meta.augment if augment is True else ("none" if augment is False else augment)
        if policy not in POLICIES:
            raise ValueError(f"augment must be True, False or one of {POLICIES}, got {augment!r}")
        self.policy = policy if self.train else "none"
        self.epoch = 0
        self._explicit_epoch = False
        self._first_batch = 0  # resume_at: where the next pass starts

    def set_epoch(self, epoch: int) -> None:
        """Use epoch `epoch`'s permutation and augmentation next (as DistributedSampler.set_epoch).

        Without calls, successive passes use epochs 0, 1, 2, ... so each pass is shuffled anew.
        """
        self.epoch = int(epoch)
        self._explicit_epoch = True

    def resume_at(self, batch: int) -> None:
        """Start the next pass at its batch `batch` (0-based): the batches before it are skipped, not
        drawn, and the rest equal an uninterrupted pass's. Applies to one pass."""
        if not 0 <= int(batch) <= len(self):
            raise ValueError(f"batch must be in [0, {len(self)}], got {batch}")
        self._first_batch = int(batch)

    def _take_first_batch(self) -> int:
        first, self._first_batch = self._first_batch, 0
        return first

    def _samples_per_rank(self) -> int:
        if not self.train:  # evaluation: disjoint shards, no padding (each image is scored once)
            return len(range(self.rank, len(self.dataset), self.world_size))
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        n = self._samples_per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """(dataset indices of this rank, their positions in the epoch order, the epoch generator)."""
        n = len(self.dataset)
        generator = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if not self.train:
            positions = torch.arange(self.rank, n, self.world_size)
            return order[positions], positions, generator
        total = self._samples_per_rank() * self.world_size
        if total > n:  # pad by wrapping around so every rank gets as many samples (DistributedSampler)
            order = torch.cat([order, order[: total - n]])
        positions = torch.arange(self.rank, total, self.world_size)
        return order[positions], positions, generator

    def first_batch(self):
        """The first batch of the next pass, without using that pass up (the epoch counter stays)."""
        epoch, explicit, first = self.epoch, self._explicit_epoch, self._first_batch
        try:
            self._first_batch = 0
            return next(iter(self), None)
        finally:
            self.epoch, self._explicit_epoch, self._first_batch = epoch, explicit, first

    def _advance(self) -> None:
        if not self._explicit_epoch:
            self.epoch += 1
        self._explicit_epoch = False

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.dataset!r}, batch_size={self.batch_size}, train={self.train}, "
                f"augment={self.policy!r}, rank={self.rank}/{self.world_size}, batches={len(self)})")


class TensorBatchLoader(_LoaderBase):
    """Loader over a `TensorImageDataset`: gathers uint8 batches and augments them as tensors."""

    def __iter__(self):
        indices, positions, generator = self._positions()
        epoch = self.epoch
        images, targets, meta = self.dataset.images, self.dataset.targets, self.dataset.meta
        n_total = positions.numel() * self.world_size
        h, w = images.shape[-2:]
        pad = default_padding(min(h, w))
        # Parameters for every position of the epoch, drawn in a fixed order whatever the rank.
        offsets = torch.randint(0, 2 * pad + 1, (2, n_total), generator=generator)
        flips = torch.rand(n_total, generator=generator) < 0.5
        self._advance()
        stop = len(self) * self.batch_size
        for start in range(self._take_first_batch() * self.batch_size, stop, self.batch_size):
            with _one_thread():
                index = indices[start:start + self.batch_size]
                batch = images.index_select(0, index)  # (B, C, H, W) uint8
                where = positions[start:start + self.batch_size]
                if self.policy in ("cifar", "crop"):
                    batch = pad_crop(batch, offsets[0, where], offsets[1, where], pad)
                if self.policy in ("cifar", "imagenet"):
                    batch = hflip(batch, flips[where])
                if self.policy == "imagenet":
                    batch = torch.stack([random_resized_crop(img, int(min(h, w)), _item_generator(
                        self.seed, epoch, int(p))) for img, p in zip(batch, where)])
                out = normalize(batch, meta.mean, meta.std), targets.index_select(0, index)
            yield out


def _item_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + position)


class _EpochItems(torch.utils.data.Dataset):
    """One epoch of a lazy data set, item j = (transformed uint8 image, label) at position j."""

    def __init__(self, dataset: LazyImageDataset, indices, positions, policy: str, seed: int, epoch: int):
        self.dataset, self.indices, self.positions = dataset, indices.tolist(), positions.tolist()
        self.policy, self.seed, self.epoch = policy, seed, epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        image, label = self.dataset[self.indices[j]]
        size = self.dataset.image_size
        if self.policy == "none":
            image = resize_center_crop(image, size)
        else:
            generator = _item_generator(self.seed, self.epoch, self.positions[j])
            if self.policy == "imagenet":
                image = random_resized_crop(image, size, generator)
            else:
                image = resize(image, (size, size))
            if self.policy in ("cifar", "imagenet") and bool(torch.rand(1, generator=generator) < 0.5):
                image = image.flip(-1)
        return image, label


class LazyBatchLoader(_LoaderBase):
    """Loader over a `LazyImageDataset`: per-item decode + transform in `num_workers` processes."""

    def __init__(self, *args, num_workers: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_workers = int(num_workers)

    def __iter__(self):
        indices, positions, _ = self._positions()
        skip = self._take_first_batch() * self.batch_size
        items = _EpochItems(self.dataset, indices[skip:], positions[skip:], self.policy, self.seed, self.epoch)
        # its own generator: DataLoader would otherwise draw its worker seed from the global RNG, and a
        # resumed run's dropout would then differ from an uninterrupted one's
        loader = torch.utils.data.DataLoader(items, batch_size=self.batch_size, shuffle=False,
                                             drop_last=self.drop_last, num_workers=self.num_workers,
                                             persistent_workers=False,
                                             generator=_epoch_generator(self.seed, self.epoch))
        self._advance()
        meta = self.dataset.meta
        for batch, labels in loader:
            with _one_thread():
                out = normalize(batch, meta.mean, meta.std), labels.to(torch.int64)
            yield out


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, augment=True, drop_last: bool | None = None,
                rank: int = 0, world_size: int = 1, num_workers: int = 2):
    """An iterable of (float32 normalised (B, C, H, W), int64 (B,)) batches over `dataset`.

    - `train`: shuffle each epoch and apply the data set's augmentation (`augment=True`), or another
      policy by name ("cifar" pad-4-crop + flip, "crop" without flip, "imagenet" random-resized-crop
      + flip, "none"); `augment=False` turns it off. Evaluation (`train=False`) keeps file order and,
      for large images, resizes the shorter side and crops the centre.
    - `drop_last` defaults to `train`. `set_epoch(e)` picks epoch e's shuffle (same seed -> same batches).
    - `rank`/`world_size`: this process's shard of every epoch (DDP); for evaluation the shards are
      disjoint and unpadded, and `evaluate` sums their counts over the ranks.
    """
    if isinstance(dataset, TensorImageDataset):
        return TensorBatchLoader(dataset, batch_size, train, seed, augment, drop_last, rank, world_size)
    if isinstance(dataset, LazyImageDataset):
        return LazyBatchLoader(dataset, batch_size, train, seed, augment, drop_last, rank, world_size,
                               num_workers=num_workers)
    raise TypeError(f"make_loader needs a deepshrink data set (get_dataset / subset), got {type(dataset).__name__}")
