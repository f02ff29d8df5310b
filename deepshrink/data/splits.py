"""The validation split: a stratified, seeded part of the training split, held out once and reused.

Every choice a run makes (the best checkpoint, early stops, the divergence check, a bench row's
settings) reads `val`; the test split is scored once, at the end, and reported beside it. The
held-out indices are saved like a calibration subset (`~/.cache/deepshrink/subsets/...-val...json`),
so every run and every seed uses the same validation images; calibration subsets are drawn from the
training part that remains.

Default: 10% of each class (CIFAR-10/100: 5,000 of 50,000; MNIST / Fashion-MNIST: 6,000 of 60,000).

Example::

    fit, val = train_val_split(get_dataset("cifar10", "train"))   # 45,000 and 5,000 images
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import UserError
from .subset import default_index_file, subset_indices

VAL_RATIO = 0.1
VAL_SEED = 0  # fixed, not the training seed: runs at different seeds are scored on the same images


def train_val_split(train_set, val_ratio: float = VAL_RATIO, seed: int = VAL_SEED):
    """(training part, validation part) of a training split; disjoint, together the whole split."""
    if not 0 < val_ratio < 1:
        raise UserError(f"val_ratio must be in (0, 1), got {val_ratio}; 0.1 holds out 10% of each class")
    val_index = subset_indices(train_set, ratio=val_ratio, seed=seed,
                               index_file=default_index_file(train_set, val_ratio, None, seed, purpose="val"))
    keep = torch.ones(len(train_set), dtype=torch.bool)
    keep[val_index] = False
    return (_renamed(train_set.select(torch.nonzero(keep).flatten()), "train"),
            _renamed(train_set.select(val_index), "val"))


def _renamed(dataset, split: str):
    dataset.meta = dataclasses.replace(dataset.meta, split=split)
    return dataset
