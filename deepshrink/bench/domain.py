"""A suite's target domain: the data set as `compress` uses it (train / validation / test splits), its images
transformed, and only a few labelled training images per class.

A domain-adaptation study (Co-Prune: prune a source-trained model for a target domain with little labelled
data, `deepshrink/bench/suites/coprune-cifar10-inverted.yaml`) describes its target domain as data::

    data:
      name: cifar10
      transform: invert        # every split's images become 255 - x (IMAGE_TRANSFORMS)
      train_per_class: 100     # 100 labelled target images per class train every row

The base checkpoint is the source model. Validation (held out of the training split, transformed too) and
test images are the target domain's; every choice reads validation, test is scored once. Both settings change
what a row computes, so both are in the row key (`SuiteData.identity`). Each row's loaders are built with the
row's own batch size, seed and calibration settings, as `deepshrink compress` builds them.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError


def _invert(images: torch.Tensor) -> torch.Tensor:
    return 255 - images  # (N, C, H, W) uint8


IMAGE_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "invert": _invert,  # colour inversion: a strong low-level shift, the classes unchanged
}


def check_domain(raw: dict, where: str) -> tuple[str | None, int | None]:
    """(transform, train_per_class) of a suite's `data:`, or a one-line UserError naming the bad one."""
    transform, per_class = raw.get("transform"), raw.get("train_per_class")
    if transform is not None and transform not in IMAGE_TRANSFORMS:
        raise UserError(f"{where}: data.transform must be one of {sorted(IMAGE_TRANSFORMS)}, got {transform!r}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise UserError(f"{where}: data.train_per_class must be a positive integer (labelled training images per "
                        f"class), got {per_class!r}")
    return transform, per_class


def transformed(name: str | None):
    """A function mapping an in-memory image data set to its transformed copy (same labels, statistics); None
    for no transform."""
    if name is None:
        return None

    def apply(dataset):
        from ..data import TensorImageDataset

        if not isinstance(dataset, TensorImageDataset):
            raise UserError(f"data.transform {name!r} needs a data set held in memory (MNIST ... STL-10, CIFAR-10 "
                            f"JPEG); {dataset.name!r} is decoded per image")
        return TensorImageDataset(IMAGE_TRANSFORMS[name](dataset.images), dataset.targets, dataset.meta)

    return apply


def domain_bundle(data, recipe: dict | None = None):
    """The DataBundle of a target domain for one row, built as `compress` builds its loaders from the row's
    resolved recipe (batch sizes, seed, augmentation, calibration); defaults for a row without one."""
    from ..config import CalibConfig, TrainConfig, _build
    from ..pipeline import build_data

    recipe = recipe or {}
    train = _build(TrainConfig, recipe.get("train") or {}, "train")
    calib = _build(CalibConfig, recipe.get("calib") or {}, "calib")
    return build_data(data.name, data.root, batch_size=train.batch_size, eval_batch_size=train.eval_batch_size,
                      calib=calib, seed=train.seed, augment=train.augment, image_transform=transformed(data.transform),
                      train_per_class=data.train_per_class)


def describe_domain(data, bundle) -> str:
    """One line a report shows above its table: the target domain and its image counts."""
    what = f"{data.name}, transform {data.transform}" if data.transform else data.name
    labelled = f"{data.train_per_class} labelled training images per class ({len(bundle.dataset)})" \
        if data.train_per_class else f"{len(bundle.dataset)} training images"
    return (f"target domain {what}: {labelled}; validation {len(bundle.val.dataset)} and test "
            f"{len(bundle.test.dataset)} images of the same domain. {data.note}").strip()
