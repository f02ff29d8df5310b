"""The few public entry points: compress, evaluate, pack, load; training_form (a method's model before training)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import Recipe, load_recipe, select_layers
from .methods import CompressContext
from .prepare import check_layers_run, first_inputs, split_attention
from .registry import METHODS


@dataclass
class CompressResult:
    model: nn.Module  # inference form, ready for `pack`
    method: str
    recipe: Recipe
    metrics: dict = field(default_factory=dict)  # val top1/top5 after, compression seconds, epochs trained
    kind: str = ""  # the method's kind: qat | layerwise | prune | dynamic | baseline


def compress(model: nn.Module, recipe, *, train_data=None, val_data=None, calib_data=None, out_dir=None,
             device=None, overrides: list[str] | None = None, extra: dict | None = None,
             inplace: bool = False, resume: bool = False) -> CompressResult:
    """Compress `model` with a recipe (a Recipe, dict, YAML path or built-in recipe / method name).

    Data arguments are iterables of (float NCHW inputs, int64 labels), e.g. `deepshrink.data.make_loader`.
    Layer-wise methods read `calib_data` (default: `train_data`); QAT methods train on `train_data`.
    `resume=True` continues an interrupted training run from `out_dir/last.pt` (same recipe and data;
    for methods with one training phase, such as every QAT method). A recipe with `train.distill` > 0
    also distils from `model` as given (a frozen copy is the teacher of every training phase).
    `device` (default: the device `model` is on) is where the model is placed, once, before the method runs;
    the training loop, the calibration batches and the evaluation follow it.

    Before the method runs, every nn.MultiheadAttention becomes a SplitAttention (its four projections
    Linear layers the method compresses), and a layer whose weight the network reads outside the layer's
    forward, or never runs, is refused by name (`deepshrink.prepare`; checked on the first data batch).

    Example::

        result = deepshrink.compress(model, "bwn", train_data=train, val_data=test,
                                     overrides=["train.epochs=1"])
        print(result.metrics["top1"])
    """
    from .engine.evaluate import model_device

    recipe = load_recipe(recipe, overrides)
    if not inplace:
        model = copy.deepcopy(model)
    _decode_resident(model)
    model = split_attention(model)  # attention's projections become Linear layers every method compresses
    # the one move: the method, its training loop and its calibration batches all use the model's device
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    entry = METHODS.get(recipe.method)
    layers = select_layers(model, recipe)
    check_layers_run(model, layers, first_inputs(calib_data, train_data, val_data))
    handler = entry.handler_cls(recipe, layers)
    # the teacher of train.distill: the model as given, before the method changes it
    teacher = copy.deepcopy(model).eval() if recipe.train.distill > 0 else None
    ctx = CompressContext(train_data=train_data, val_data=val_data,
                          calib_data=calib_data if calib_data is not None else train_data,
                          train=recipe.train, calib=recipe.calib,
                          run_dir=Path(out_dir) if out_dir else None, device=device, extra=extra or {},
                          resume=resume, teacher=teacher)
    start = time.perf_counter()
    model = handler.compress(model, ctx)
    compress_seconds = time.perf_counter() - start
    model = handler.convert(model)
    model.eval()
    metrics = {"compress_seconds": compress_seconds, "epochs": handler.training_epochs()}
    if val_data is not None:
        metrics.update(evaluate(model, val_data, device=device))
    return CompressResult(model=model, method=entry.name, recipe=recipe, metrics=metrics, kind=handler.kind)


def training_form(model: nn.Module, recipe, batch, overrides: list[str] | None = None) -> nn.Module | None:
    """A copy of `model` in the form the recipe's method trains it, as `compress` builds it before its first
    training step (the same layers selected, quantizers initialised from `batch`, train mode), untrained;
    None for a method that trains no form of its own (layer-wise, pruning, fp32).

    For measuring what a training step of a method costs, or probing its quantizers before training.

    Example::

        qat = deepshrink.training_form(model, "dorefa-w4a4", (images, labels))
        loss = torch.nn.functional.cross_entropy(qat(images), labels)
    """
    recipe = load_recipe(recipe, overrides)
    model = copy.deepcopy(model)
    _decode_resident(model)
    model = split_attention(model)  # as compress prepares the model, so the same layers are selected
    handler = METHODS.get(recipe.method).handler_cls(recipe, select_layers(model, recipe))
    return handler.training_form(model, batch)


def _decode_resident(model: nn.Module) -> None:
    """A loaded model's compressed layers hold codes only, and a method's writes to `layer.weight` would be
    lost: give them the float copy that the layers `convert` produces have."""
    from .nn.compressed import _CompressedMixin

    for module in model.modules():
        if isinstance(module, _CompressedMixin) and module.is_resident:
            module.decode_weight(trainable=False)


def evaluate(model: nn.Module, data, device=None, task: str = "evaluate") -> dict:
    """Top-1 / top-5 accuracy (percent) and mean loss of `model` on `data`; progress shows as `task`."""
    from .engine import evaluate as _evaluate

    return _evaluate(model, data, device=device, task=task)


def pack(model: nn.Module, path, **options) -> dict:
    """Write `model` (inference form) to a `.dsz` file at its real bit width; returns the size report."""
    from .packing import save

    return save(model, path, **options)


def load(path, decode: bool = False, frozen: bool = False):
    """Rebuild a model from a `.dsz` file without the code that trained it.

    The compressed layers keep only their codes (at their bit width) and decode them on each call, so
    the model's tensors are about as small in memory as its file. `decode=True` gives them float weights
    as trainable parameters instead (to fine-tune); `deepshrink.nn.decode_weights(model)` and
    `release_weights(model)` switch a loaded model either way. `frozen=True` gives an inference-only
    `deepshrink.runtime.FrozenModel` instead of an nn.Module: the same outputs bit for bit, without the
    module tree's Python objects (about twice the file of a ResNet-20), for deployments that hold many models.

    Example::

        model = deepshrink.load("resnet20-ldnq.dsz")
        logits = model(images)
    """
    from .packing import load as _load

    if decode and frozen:
        raise ValueError("decode=True gives trainable float weights, frozen=True an inference-only model: "
                         "choose one")
    model = _load(path, decode=decode)
    if not frozen:
        return model
    from .packing.format import release_scratch
    from .runtime.frozen import FrozenModel

    frozen_model = FrozenModel(model)
    del model
    frozen_model = frozen_model.compacted()
    release_scratch()  # the pages of the copy it replaced
    return frozen_model
