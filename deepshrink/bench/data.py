"""A suite's data when the data set is not used as it is: images resized for the model, the model's own
normalisation, counted calibration and evaluation images, and labels that may not be the model's.

Most suites name a data set and use it as `deepshrink compress` does (`data: {name: cifar10}`). A suite may
instead say how its images are drawn and prepared, e.g. an ImageNet-trained network measured on the natural
images at hand (`deepshrink/bench/suites/efficientnet-lite0.yaml`)::

    data:
      name: cifar10
      input_size: 224                      # resized (bilinear, antialiased) from the data set's own size
      mean: [0.4980392156862745, ...]      # the model's normalisation, on the 0..1 pixel scale
      std: [0.5019607843137255, ...]
      calib: {split: train, per_class: 20}  # 200 calibration images, stratified, drawn with the suite's seed
      eval: {split: test, per_class: 50}    # 500 evaluation images
      batch_size: 16
      labels: false                        # the data set's classes are not the model's: no top-1
      note: "CIFAR-10 test images resized to 224, not ImageNet (none on this machine)"

With `labels: false` the bench reports no top-1 (it would score ImageNet predictions against CIFAR-10
classes); the suite must list the `fidelity` measure, which compares each row with the float model on the
evaluation images. Every one of these settings changes what a row computes, so all of them are part of the
row key (`SuiteData.identity`).

A suite may instead keep the data set as `compress` uses it in another domain: `transform: invert` and
`train_per_class: 100` (a target domain with few labelled images, `deepshrink.bench.domain`).

A draw may also be a count, `{split: train, images: 1024}`: that many images drawn uniformly at random with
the suite's seed (not stratified). An image folder too large to hold in memory (`data: {name: imagefolder}`,
images above 128 pixels) is drawn the same way and decoded per item by loader workers; `input_size` then
resizes the shorter side to 256/224 of it and crops the centre, as ImageNet's evaluation does. `generate:`
writes such a folder first (`deepshrink.bench.generated`; `deepshrink/bench/suites/resnet50-imagenet-like.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

_KEYS = {"name", "root", "input_size", "mean", "std", "calib", "eval", "batch_size", "labels", "note",
         "transform", "train_per_class", "generate"}
_DOMAIN = {"transform", "train_per_class"}  # a target domain of the data set as `compress` uses it (bench.domain)
_CUSTOM = _KEYS - {"name", "root", "note", "generate"} - _DOMAIN  # any of these: the bench draws and prepares the images itself
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class Draw:
    """`per_class` images of each class from `split`, stratified, drawn with the suite's seed; or, with
    `images`, that many images of `split` drawn uniformly at random with the suite's seed."""

    split: str
    per_class: int | None
    images: int | None = None

    def identity(self) -> list:
        return [self.split, self.per_class] + ([self.images] if self.images is not None else [])


@dataclass(frozen=True)
class SuiteData:
    """The `data:` of a suite. Without any of the custom keys it is the named data set as `compress` uses it."""

    name: str
    root: str | None = None
    input_size: int | None = None  # None: the data set's own size
    mean: tuple | None = None  # None: the data set's own statistics
    std: tuple | None = None
    calib: Draw | None = None
    eval: Draw | None = None
    batch_size: int = 100
    labels: bool = True
    note: str = ""
    transform: str | None = None  # an image transform applied to every split (bench.domain.IMAGE_TRANSFORMS)
    train_per_class: int | None = None  # labelled training images per class (the rest of the training part unused)
    generate: object = None  # a bench.generated.GeneratedFolder: the image folder is written first

    @property
    def custom(self) -> bool:
        """True when the bench draws and prepares the images itself (see the module docstring)."""
        return self.calib is not None

    @property
    def domain(self) -> bool:
        """True when the data set is used as `compress` uses it but in another domain (`bench.domain`)."""
        return self.transform is not None or self.train_per_class is not None

    def identity(self) -> dict:
        """What the row key hashes: the name, plus every custom setting (none for a plain data set, so the
        keys of suites written before these settings existed do not change)."""
        if self.domain:
            return {"name": self.name, "transform": self.transform, "train_per_class": self.train_per_class}
        if not self.custom:
            return {"name": self.name}
        identity = {"name": self.name, "input_size": self.input_size, "mean": self.mean, "std": self.std,
                    "calib": self.calib.identity(), "eval": self.eval.identity(), "batch_size": self.batch_size,
                    "labels": self.labels}
        return {**identity, "generate": self.generate.identity()} if self.generate else identity


def describe(data: SuiteData, calib_images: int, eval_images: int) -> str:
    """One line a report shows above its table: what the images are and how many, then the suite's note."""
    size = f", resized to {data.input_size}x{data.input_size}" if data.input_size else ""
    how = "stratified" if data.calib.per_class and data.eval.per_class else "drawn at random with the suite's seed"
    if data.generate:
        size = f", shorter side to {round(data.input_size * 256 / 224)}, centre {data.input_size}x{data.input_size}" \
            if data.input_size else ""
        text = (f"{calib_images} calibration images ({data.calib.split}) and {eval_images} evaluation images "
                f"({data.eval.split}) from {data.generate.describe()} ({how}){size}")
    else:
        text = (f"{calib_images} calibration images from {data.name} {data.calib.split} and {eval_images} evaluation "
                f"images from {data.name} {data.eval.split} ({how}){size}")
    text += "; no top-1: the data set's classes are not the model's." if not data.labels else "."
    return f"{text} {data.note}".strip()


def parse_data(raw, where: str) -> SuiteData:
    """`data:` of a suite as a SuiteData; every mistake is a one-line UserError naming the key."""
    if not isinstance(raw, dict) or not raw.get("name"):
        raise UserError(f"{where}: `data:` must be a mapping with a `name:` (e.g. data: {{name: cifar10}})")
    unknown = set(raw) - _KEYS
    if unknown:
        raise UserError(f"{where}: data: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if (set(raw) & _CUSTOM or raw.get("generate")) and not (raw.get("calib") and raw.get("eval")):
        raise UserError(f"{where}: data: {sorted(set(raw) & (_CUSTOM | {'generate'}))} need both `calib:` and `eval:` "
                        "(e.g. calib: {split: train, per_class: 20}, eval: {split: test, per_class: 50})")
    size = raw.get("input_size")
    if size is not None and not _positive_int(size):
        raise UserError(f"{where}: data.input_size must be a positive integer (pixels per side), got {size!r}")
    mean, std = raw.get("mean"), raw.get("std")
    if (mean is None) != (std is None):
        raise UserError(f"{where}: data: give both `mean:` and `std:` (per channel, 0..1 pixel scale) or neither")
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise UserError(f"{where}: data.{key} must be a list of numbers, one per channel, got {value!r}")
    if std is not None and (len(std) != len(mean) or min(std) <= 0):
        raise UserError(f"{where}: data.std must hold one positive number per channel of data.mean, got {std!r}")
    batch = raw.get("batch_size", 100)
    if not _positive_int(batch):
        raise UserError(f"{where}: data.batch_size must be a positive integer, got {batch!r}")
    labels = raw.get("labels", True)
    if not isinstance(labels, bool):
        raise UserError(f"{where}: data.labels must be true or false, got {labels!r}")
    from .domain import check_domain

    transform, per_class = check_domain(raw, where)
    if (transform or per_class) and set(raw) & _CUSTOM:
        raise UserError(f"{where}: data.transform / data.train_per_class change the data set as `compress` uses it; "
                        f"they do not combine with {sorted(set(raw) & _CUSTOM)} (drawn images)")
    return SuiteData(name=str(raw["name"]), root=raw.get("root"), input_size=size,
                     mean=tuple(float(v) for v in mean) if mean is not None else None,
                     std=tuple(float(v) for v in std) if std is not None else None,
                     calib=_draw(raw.get("calib"), f"{where}: data.calib"),
                     eval=_draw(raw.get("eval"), f"{where}: data.eval"),
                     batch_size=batch, labels=labels, note=str(raw.get("note") or ""), transform=transform,
                     train_per_class=per_class, generate=_generated(raw, where))


def _generated(raw: dict, where: str):
    from .generated import parse_generate

    spec = parse_generate(raw.get("generate"), where)
    if spec is not None and raw["name"] != "imagefolder":
        raise UserError(f"{where}: data.generate writes an image folder: give `name: imagefolder`, got {raw['name']!r}")
    return spec


def _draw(raw, where: str) -> Draw | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) not in ({"split", "per_class"}, {"split", "images"}):
        raise UserError(f"{where} must be {{split: train|test, per_class: N}} or {{split: train|test, images: N}}, "
                        f"got {raw!r}")
    count = raw.get("per_class", raw.get("images"))
    if raw["split"] not in _SPLITS or not _positive_int(count):
        raise UserError(f"{where}: split must be one of {list(_SPLITS)} and per_class / images a positive integer, "
                        f"got {raw!r}")
    return Draw(raw["split"], raw.get("per_class"), raw.get("images"))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def build_bundle(data: SuiteData, seed: int):
    """(DataBundle for `pipeline.run_compress`, evaluation loader) of a custom `data:`.

    The bundle's calibration loader holds the `calib` draw; its `dataset` is that draw (image size and
    channels for MACs). With labels, validation and test are the `eval` draw. Without labels, nothing is
    chosen on validation and no top-1 is reported, so validation and test hold only the first evaluation
    batch (the pipeline's own top-1 passes then cost one batch; the bench drops their figures). There is no
    training draw: the training loader refuses to be read, so a method that trains fails with the reason.
    """
    from ..data import make_loader
    from ..pipeline import DataBundle

    calib = _prepared(data, data.calib, seed)
    evaluation = _prepared(data, data.eval, seed)
    eval_loader = make_loader(evaluation, data.batch_size, train=False)
    if data.labels:
        val = test = eval_loader
    else:
        first = evaluation.select(torch.arange(min(data.batch_size, len(evaluation))))
        val = test = make_loader(first, data.batch_size, train=False)
    bundle = DataBundle(train=NoTraining(data), val=val, test=test,
                        calib=make_loader(calib, data.batch_size, train=False), dataset=calib)
    return bundle, eval_loader


def _prepared(data: SuiteData, draw: Draw, seed: int):
    """The drawn images of `draw.split`, resized to `input_size`, carrying the normalisation to apply. A data set
    decoded per item stays so: the draw is a list of files, each resized and centre-cropped as it is read."""
    import dataclasses

    from ..data import LazyImageDataset, TensorImageDataset, get_dataset, stratified_indices

    full = get_dataset(data.name, draw.split, root=_root(data, seed))
    if not isinstance(full, (TensorImageDataset, LazyImageDataset)):
        raise UserError(f"data set {data.name!r} is neither held in memory nor an image folder read per item")
    if draw.images is not None:
        if draw.images > len(full):
            raise UserError(f"data: a draw of {draw.images} images from {data.name} {draw.split}, which holds "
                            f"{len(full)}; draw fewer")
        generator = torch.Generator().manual_seed(int(seed))
        index = torch.randperm(len(full), generator=generator)[:draw.images].sort().values
    else:
        index = stratified_indices(full.targets, full.num_classes, per_class=draw.per_class, seed=seed)
    meta = full.meta
    if data.mean is not None:
        if len(data.mean) != full.in_channels:
            raise UserError(f"data.mean has {len(data.mean)} values, {data.name} images have {full.in_channels} "
                            "channels")
        meta = dataclasses.replace(meta, mean=data.mean, std=data.std)
    meta = dataclasses.replace(meta, augment="none")
    if isinstance(full, LazyImageDataset):  # read per item: shorter side to 256/224 of the size, centre crop
        chosen = full.select(index)
        drawn = LazyImageDataset(chosen._read, chosen.targets, meta, data.input_size or full.image_size)
        drawn.root = full.root
        return drawn
    from ..data.transforms import resize

    images = full.images[index]  # (N, C, H, W) uint8
    if data.input_size:
        images = resize(images, (data.input_size, data.input_size))  # (N, C, S, S) uint8, bilinear
    return TensorImageDataset(images, full.targets[index], meta)


def data_root(data: SuiteData, seed: int):
    """Where the data set is read from: the generated folder (`generated.folder_for`), else `data.root` (None: the
    data set's default places). Names the place only; `build_bundle` writes a generated folder first."""
    if data.generate is None:
        return data.root
    from .generated import folder_for

    return str(folder_for(data.generate, seed, data.root))


def _root(data: SuiteData, seed: int):
    """`data_root`, with a generated folder written first when it is not complete."""
    if data.generate is None:
        return data.root
    from .generated import ensure_folder

    return ensure_folder(data.generate, seed, data.root)


class NoTraining:
    """The training loader of custom suite data (calibration and evaluation draws only): reading it is an
    error naming the reason."""

    def __init__(self, data: SuiteData):
        self.data = data

    def __iter__(self):
        why = " and its classes are not the model's (labels: false)" if not self.data.labels else ""
        raise UserError(f"this suite's data ({self.data.name}) draws calibration and evaluation images only{why}; "
                        "a method that trains cannot run here, only methods that read calibration data")

    def __len__(self) -> int:  # a trainer asks for the length first
        self.__iter__()
        return 0
