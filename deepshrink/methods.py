"""The base every compression method handler derives from, and the context it runs in.

A method = a config dataclass that validates itself (`__post_init__` raises `UserError` naming the
field and the allowed range) + a handler registered for it::

    @dataclass
    class BWNConfig:
        per_channel: bool = True

    @register_method("bwn", BWNConfig)
    class BWN(Method):
        kind = "qat"
        def compress(self, model, ctx): ...   # swap layers, then ctx.fit(model, hooks)
        def convert(self, model): ...         # -> inference form (CompressedConv2d, ...), packable

`deepshrink.compress` builds the handler with the recipe's per-layer parameters and calls
`compress` then `convert`. Nothing outside the handler special-cases a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from .config import CalibConfig, Recipe, TrainConfig, _build
from .registry import register_method


@dataclass
class CompressContext:
    """What a method may use: data loaders yielding (float NCHW inputs, int64 labels), budgets, a run folder."""

    train_data: Iterable | None = None
    val_data: Iterable | None = None
    calib_data: Iterable | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    run_dir: Path | None = None
    device: Any = None
    extra: dict = field(default_factory=dict)  # method-specific inputs (e.g. Co-Prune's source data)
    resume: bool = False  # continue the first training run from run_dir/last.pt when it exists
    teacher: nn.Module | None = None  # the uncompressed model, for train.distill > 0

    def fit(self, model: nn.Module, hooks=(), config: TrainConfig | None = None, data=None) -> dict:
        """Train `model` with the one training loop (deepshrink.engine.Trainer); returns its final metrics."""
        from .engine import Trainer
        from .engine.hooks import Distillation

        data = data if data is not None else self.train_data
        if data is None:
            from .errors import UserError

            raise UserError("this method trains: give training data (--data / train_data=...)")
        resume = None
        if self.resume and self.run_dir is not None and (Path(self.run_dir) / "last.pt").exists():
            resume = Path(self.run_dir) / "last.pt"
        self.resume = False  # a method's later training phases start fresh
        config = config or self.train
        hooks = list(hooks)
        if config.distill > 0 and not any(isinstance(h, Distillation) for h in hooks):
            if self.teacher is None:
                from .errors import UserError

                raise UserError("train.distill > 0 needs a teacher: compress() keeps the model it was given as "
                                "the teacher; set train.distill=0 when calling a method directly")
            hooks.append(Distillation(self.teacher, config.distill, config.distill_temperature))
        trainer = Trainer(model, data, self.val_data, config, hooks=hooks,
                          run_dir=self.run_dir, device=self.device, resume=resume)
        return trainer.fit()


class Method:
    """Base class of method handlers. Subclasses set `kind` and implement `compress` and `convert`."""

    kind = "qat"  # qat | layerwise | prune | dynamic | baseline
    method_name: str = "?"
    config_cls: type = object

    def __init__(self, recipe: Recipe, layers: dict[str, dict]):
        self.recipe = recipe
        self.config = recipe.method_config()
        # per-layer validated configs; the recipe's overrides already merged into each dict
        self.layer_configs = {
            name: _build(self.config_cls, params, f"method {self.method_name!r}, layer {name!r}")
            for name, params in layers.items()
        }

    def compress(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        raise NotImplementedError

    def convert(self, model: nn.Module) -> nn.Module:
        """Inference form: compressed layers become packable modules holding EncodedWeights."""
        raise NotImplementedError

    def training_form(self, model: nn.Module, batch) -> nn.Module | None:
        """`model` (changed in place) as this method trains it, before the first training step, with anything
        set from data set from `batch` (inputs, labels); None for a method that trains no form of its own.
        What `deepshrink.training_form` returns: the model a training step of this method runs."""
        return None

    def training_epochs(self) -> float:
        """Epochs of labelled training this recipe asks the method for (what a result row reports as its
        budget): `train.epochs` for methods that train through `ctx.fit`."""
        return self.recipe.train.epochs


@dataclass
class BaselineConfig:
    """The full-precision reference has no parameters."""


@register_method("fp32", BaselineConfig)
class Baseline(Method):
    """The full-precision reference as a method: `compress` returns the model unchanged and `pack` writes it
    at fp32, so a benchmark's reference row is measured by the same code as every compressed row.

    Example::

        result = deepshrink.compress(model, "fp32")  # result.model is model, in eval mode
    """

    kind = "baseline"

    def compress(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        return model

    def convert(self, model: nn.Module) -> nn.Module:
        return model

    def training_epochs(self) -> float:
        return 0
