"""The end-to-end path every front end shares: build model and data, compress, pack, re-measure.

`deepshrink compress`, every `deepshrink bench` row (the full-precision one included, as method `fp32`)
and `deepshrink.run_compress` hand a `deepshrink.spec.RunSpec` to `run_compress`, so what a benchmark
reports is what a user gets. Figures come from the packed file, reloaded, not from the in-memory model.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from . import __version__
from .config import CalibConfig
from .errors import UserError
from .registry import create_model
from .spec import RunSpec


def parse_kv(items) -> dict:
    """`["shortcut=B", "num_classes=10"]` or `"shortcut=B,num_classes=10"` -> {"shortcut": "B", ...}."""
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise UserError(f"expected key=value, got {part!r} (e.g. --model-args shortcut=B)")
            key, value = part.split("=", 1)
            out[key.strip()] = yaml.safe_load(value)
    return out


def build_model(name: str, model_args=None, base=None, num_classes=None, in_channels=None) -> nn.Module:
    """A registered model, sized for the data, optionally loaded from a checkpoint (`base`)."""
    kwargs = parse_kv(model_args)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if in_channels is not None:
        kwargs.setdefault("in_channels", in_channels)
    model = create_model(name, **kwargs)
    if base:
        from .engine.checkpoint import load_weights

        load_weights(model, base)
    return model


@dataclass
class DataBundle:
    train: object  # the training split minus the validation part
    val: object  # held out of the training split: every choice reads it
    test: object  # scored once, at the end
    calib: object  # drawn from the training part
    dataset: object  # the training part, for num_classes / in_channels / image_size


def build_data(name: str, root=None, download=False, batch_size=128, eval_batch_size=500,
               calib: CalibConfig | None = None, seed=0, train_subset=None, augment=True,
               rank: int = 0, world_size: int = 1, image_transform=None, train_per_class=None) -> DataBundle:
    """Train / validation / test loaders and the stratified calibration subset (1% of the training part).

    The validation split is held out of the training split (`deepshrink.data.splits`); `train_subset`
    (a ratio, or a total image count) limits the training part after that. With `world_size` > 1 the
    training, validation and test loaders are this rank's shards; the calibration loader is whole (layer-wise
    methods pick their shard of its batches, `deepshrink.layerwise.base`).

    A target domain (`deepshrink.bench.domain`): `image_transform` maps every split's data set to another
    (colour-inverted images, say) before the validation split is drawn; `train_per_class` keeps that many
    labelled training images per class after it (stratified; one fixed draw, so every
    training seed sees the same labelled images)."""
    from .data import get_dataset, make_loader, subset
    from .data.splits import train_val_split

    domain = image_transform or (lambda dataset: dataset)
    train_set, val_set = train_val_split(domain(get_dataset(name, "train", root=root, download=download)))
    test_set = domain(get_dataset(name, "test", root=root, download=download))
    calib = calib or CalibConfig()
    calib_set = subset(train_set, ratio=None if calib.per_class else calib.ratio, per_class=calib.per_class,
                       seed=calib.seed)
    if train_subset:
        train_set = subset(train_set, ratio=train_subset if train_subset <= 1 else None,
                           per_class=None if train_subset <= 1 else int(train_subset) // train_set.num_classes,
                           seed=seed)
    if train_per_class:
        train_set = subset(train_set, per_class=train_per_class, seed=0)  # one draw, whatever the training seed
    return DataBundle(
        train=make_loader(train_set, batch_size, train=True, seed=seed, augment=augment, rank=rank,
                          world_size=world_size),
        val=make_loader(val_set, eval_batch_size, train=False, rank=rank, world_size=world_size),
        test=make_loader(test_set, eval_batch_size, train=False, rank=rank, world_size=world_size),
        calib=make_loader(calib_set, calib.batch_size, train=False),
        dataset=train_set,
    )


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters at fp32: the reference every ratio is against."""
    return 4 * sum(p.numel() for p in model.parameters())


def run_compress(spec: RunSpec, *, data: DataBundle | None = None) -> dict:
    """Run a resolved compress run: build the model and the loaders, compress, pack to `spec.out/model.dsz`,
    measure from the file. `deepshrink compress`, every `deepshrink bench` row and `deepshrink.run_compress`
    come here, so what a benchmark reports is what a user gets.

    Returns (and writes to `spec.out/metrics.json`) top-1/top-5 from the reloaded file, the base model's
    top-1 (`spec.evaluate_base`), packed bytes, ratio against fp32, MACs, BOPs, the method's kind, its
    training epochs and compression time. `spec.resume` continues an interrupted training run from
    `spec.out/train/last.pt`. `data` replaces the loaders the spec names (a benchmark's smaller test slice).
    The model is placed on `spec.device` here, once; the method, the training loop and the evaluations
    find it there.

    Example::

        spec = run_spec("bwn", model="lenet5", data="fashion-mnist", out="runs/bwn", overrides=["train.epochs=1"])
        metrics = run_compress(spec)
    """
    from . import api
    from .analysis import profile
    from .engine import distributed, seed_everything

    recipe, device, processes = spec.recipe, torch.device(spec.device), spec.processes
    distributed.init_from_env(device)  # under torchrun: join the group before the loaders are split
    main_process = processes.rank == 0
    out_dir = spec.out
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    bundle = data or build_data(spec.data.name, spec.data.root, spec.data.download, recipe.train.batch_size,
                                recipe.train.eval_batch_size, recipe.calib, recipe.train.seed, spec.data.train_subset,
                                augment=recipe.train.augment, rank=processes.rank, world_size=processes.world_size)
    ds = bundle.dataset
    seed_everything(recipe.train.seed)  # a model built without a base starts from the same weights every run
    net = build_model(spec.model.name, spec.model.args, spec.model.base, num_classes=ds.num_classes,
                      in_channels=ds.in_channels).to(device)
    input_size = (ds.in_channels, *_hw(ds.image_size))
    # the model's own class count: a model run on data whose labels are not its classes (an ImageNet
    # network on CIFAR-10 images, a label-free bench suite) is built with num_classes in its arguments
    classes = int(dict(spec.model.args or {}).get("num_classes", ds.num_classes))
    metrics = {"method": recipe.method, "model": spec.model.name, "data": spec.data.name, "seed": recipe.train.seed,
               "version": __version__, "fp32_bytes": fp32_bytes(net), "classes": classes}
    if spec.evaluate_base:
        metrics["base_val_top1"] = api.evaluate(net, bundle.val, task="evaluate base, val")["top1"]
        metrics["base_top1"] = api.evaluate(net, bundle.test, task="evaluate base, test")["top1"]
    if main_process:
        (out_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    result = api.compress(net, recipe, train_data=bundle.train, val_data=bundle.val, calib_data=bundle.calib,
                          out_dir=out_dir / "train", device=device, inplace=True, resume=spec.resume)
    packed = out_dir / "model.dsz"
    layer_report = getattr(result.model, "deepshrink_report", None)  # layer-wise methods: per-layer seconds, bits
    if main_process and layer_report:
        (out_dir / "layers.json").write_text(json.dumps(layer_report, indent=1, default=_plain) + "\n")
    if main_process:  # rank 0 alone packs and writes the run folder
        api.pack(result.model, packed, data={"name": spec.data.name, "input_shape": list(input_size),
                                             "mean": list(ds.mean), "std": list(ds.std),
                                             "num_classes": classes})
    reloaded = _load_on_every_rank(packed).to(device)
    # under torchrun: each rank its shard
    from_file = api.evaluate(reloaded, bundle.val, task=f"evaluate {packed.name}, val")
    test = api.evaluate(reloaded, bundle.test, task=f"evaluate {packed.name}, test")  # the one look
    if not main_process:
        return {**metrics, "rank": processes.rank}
    totals = profile(reloaded, input_size).totals
    metrics.update(
        kind=result.kind, epochs=result.metrics["epochs"],
        top1=test["top1"], top5=test["top5"], val_top1=from_file["top1"], val_top5=from_file["top5"],
        val_top1_in_memory=result.metrics.get("top1"),
        compress_seconds=round(result.metrics["compress_seconds"], 2),
        file_bytes=os.path.getsize(packed),
        macs=totals.get("macs"), bops=totals.get("bops"), packed=str(packed),
    )
    metrics["ratio"] = round(metrics["fp32_bytes"] / metrics["file_bytes"], 3)
    if "base_top1" in metrics:
        metrics["drop"] = round(metrics["base_top1"] - metrics["top1"], 3)
    _write_json(out_dir / "metrics.json", metrics)
    return metrics


def saved_recipe_is(out_dir: Path, recipe) -> bool | None:
    """Whether the run folder `out_dir` was made by `recipe` (its `recipe.yaml`, which `run_compress` writes);
    None when the folder holds no recipe.yaml. `deepshrink compress --resume` and a resumed bench row ask it."""
    saved = Path(out_dir) / "recipe.yaml"
    if not saved.is_file():
        return None
    try:
        return yaml.safe_load(saved.read_text()) == yaml.safe_load(yaml.safe_dump(recipe.to_dict()))
    except yaml.YAMLError:
        return False


def _load_on_every_rank(packed: Path) -> nn.Module:
    """The packed model, reloaded from rank 0's file on every rank: the bytes are broadcast, so ranks on
    other machines need no shared file system."""
    from . import api
    from .engine import distributed

    if not distributed.is_distributed():
        return api.load(packed)
    payload = distributed.broadcast_object(packed.read_bytes() if distributed.is_main_process() else None)
    if distributed.is_main_process():
        return api.load(packed)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / packed.name
        copy.write_bytes(payload)
        return api.load(copy)


def _hw(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _plain(value):
    """A JSON value for a solver's figure (a 0-d tensor or numpy scalar) in a layer report."""
    return value.item() if hasattr(value, "item") else str(value)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)

