"""Recipes: which method, its parameters, per-layer overrides, and the training budget.

A recipe is YAML (or a dict)::

    method: dorefa
    params: {weight_bits: 2, act_bits: 2}
    keep_first_last: true        # first conv and last linear stay full precision, as in the papers
    layers:                      # per-layer overrides, matched in order by fnmatch pattern on module name
      - {pattern: "layer3.*", params: {weight_bits: 4}}
      - {pattern: "layer1.0.conv1", skip: true}
    train: {epochs: 8, lr: 0.01, schedule: cosine}
    calib: {ratio: 0.01, seed: 0}

`--set key=value` overrides use dotted paths (`params.weight_bits=4`, `train.epochs=2`).
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .errors import UserError

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass
class TrainConfig:
    """Budget and optimiser of the one training loop (deepshrink.engine.Trainer)."""

    epochs: float = 1
    batch_size: int = 128
    eval_batch_size: int = 500
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # constant | step | cosine | onecycle
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for `step`
    gamma: float = 0.1
    warmup: float = 0.0  # fraction of training (onecycle's pct_start, linear warm-up otherwise)
    label_smoothing: float = 0.0
    channels_last: bool = False
    amp: bool = False  # CUDA only
    seed: int = 0
    deterministic: bool = False
    augment: bool = True
    log_every: int = 50
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    tensorboard: bool = False  # also write TensorBoard events to RUN/tb (needs `tensorboard`)
    # knowledge distillation from the model as handed to `compress` (the uncompressed network): adds
    # distill * T^2 * KL(teacher || student) at temperature T = distill_temperature; 0 = off
    distill: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self):
        if self.epochs < 0:
            raise UserError(f"train.epochs must be >= 0, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise UserError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise UserError(f"train.optimizer must be one of sgd, adam, adamw; got {self.optimizer!r}")
        if self.schedule not in ("constant", "step", "cosine", "onecycle"):
            raise UserError(
                f"train.schedule must be one of constant, step, cosine, onecycle; got {self.schedule!r}"
            )
        if not self.lr > 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if not self.distill >= 0:
            raise UserError(f"train.distill (weight of the distillation loss) must be >= 0, got {self.distill}")
        if not self.distill_temperature > 0:
            raise UserError(f"train.distill_temperature must be > 0, got {self.distill_temperature}")
        self.milestones = tuple(self.milestones)


@dataclass
class CalibConfig:
    """The small calibration subset used by layer-wise methods (1% of the training set by default)."""

    ratio: float | None = 0.01
    per_class: int | None = None
    seed: int = 0
    batch_size: int = 100

    def __post_init__(self):
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise UserError(f"calib.ratio must be in (0, 1], got {self.ratio}")
        if self.per_class is not None and self.per_class < 1:
            raise UserError(f"calib.per_class must be >= 1, got {self.per_class}")


@dataclass
class LayerOverride:
    pattern: str
    params: dict = field(default_factory=dict)
    skip: bool = False


@dataclass
class Recipe:
    method: str
    params: dict = field(default_factory=dict)
    keep_first_last: bool = True
    layers: list = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = _build(TrainConfig, self.train, "train")
        if isinstance(self.calib, dict):
            self.calib = _build(CalibConfig, self.calib, "calib")
        if not isinstance(self.layers, list):
            raise UserError(f"layers must be a list of mappings, e.g. [{{pattern: 'fc1', skip: true}}], "
                            f"got {self.layers!r}")
        for index, override in enumerate(self.layers):
            if not isinstance(override, (dict, LayerOverride)):
                raise UserError(f"layers[{index}] must be a mapping like {{pattern: 'fc*', params: {{...}}}} or "
                                f"{{pattern: 'fc1', skip: true}}, got {override!r}")
        self.layers = [
            o if isinstance(o, LayerOverride) else _build(LayerOverride, o, f"layers[{i}]")
            for i, o in enumerate(self.layers)
        ]

    def method_config(self, **extra):
        """The validated config dataclass of this recipe's method (global params + `extra`)."""
        from .registry import METHODS

        entry = METHODS.get(self.method)
        return _build(entry.config_cls, {**self.params, **extra}, f"method {self.method!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}"
        )
    hints = _field_types(cls)
    for name, value in values.items():
        expected = hints.get(name)
        if expected is not None and not _matches(value, expected):
            try:  # the class's own check, where it has one, names the allowed range too
                cls(**values)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            except Exception:  # noqa: BLE001 - e.g. comparing a str with an int: the type message says more
                pass
            raise UserError(f"{where}: {name} must be {_describe(expected)}, got {value!r}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


def _field_types(cls) -> dict:
    """Field name -> resolved annotation (empty for names whose annotation cannot be resolved)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation this module cannot resolve: leave the field unchecked
        return {}


def _matches(value, expected) -> bool:
    """Whether `value` fits a scalar annotation (int, float, bool, str, None and unions of them);
    anything richer (lists, dicts, dataclasses) is left to the dataclass's own checks."""
    if expected is typing.Any:
        return True
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected in (dict, list):
        return isinstance(value, expected)
    return True


def _describe(expected) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(member) for member in typing.get_args(expected))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping (key: value, ...)", list: "a list ([..., ...])"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def load_recipe(source, overrides: list[str] | None = None, method: str | None = None) -> Recipe:
    """Load a recipe from a path, a built-in recipe name, a method name (its defaults), a dict or a Recipe;
    apply `--set` overrides. A name is a file first, then a built-in recipe, then a method: the one rule
    every front end (`deepshrink compress`, `deepshrink.compress`, a bench row) resolves a recipe by.

    Example::

        recipe = load_recipe("dorefa-w2a2", overrides=["train.epochs=1"])
        recipe = load_recipe("magnitude")  # no built-in recipe of that name: the method's defaults
    """
    if isinstance(source, Recipe):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)  # overrides write into nested mappings: never into the caller's
    elif source is None:
        if method is None:
            raise UserError("give a recipe (--recipe FILE or a built-in name) or a method (--method NAME)")
        data = {"method": method}
    else:
        path = Path(source)
        if not path.exists():
            builtin = RECIPE_DIR / f"{source}.yaml"
            if not builtin.exists():
                return load_recipe({"method": _method_named(source)}, overrides, method)
            path = builtin
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"recipe {path} must be a YAML mapping with at least `method:`")
    if method is not None:
        data["method"] = method
    for item in overrides or []:
        _apply_override(data, item)
    if "method" not in data:
        raise UserError("recipe has no `method:`; see `deepshrink recipes` for examples")
    recipe = _build(Recipe, data, "recipe")
    recipe.method_config()  # validate now, with a clear message, rather than mid-run
    return recipe


def _method_named(source) -> str:
    """`source` when it names a registered method; else the error listing what a recipe name may be."""
    from .registry import METHODS

    if str(source).lower() in METHODS and not str(source).endswith(".yaml"):
        return str(source)
    raise UserError(f"recipe {source!r} is neither a file nor a built-in recipe nor a method; "
                    f"built-in recipes: {', '.join(list_recipes())}; methods: {', '.join(METHODS.names())}")


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise UserError(f"--set expects key=value (e.g. train.epochs=2), got {item!r}")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    if len(parts) == 1 and parts[0] not in {f.name for f in dataclasses.fields(Recipe)}:
        parts = ["params"] + parts  # `--set weight_bits=4` means the method's parameter
    node = data
    for part in parts[:-1]:
        if dataclasses.is_dataclass(node.get(part)):
            node[part] = dataclasses.asdict(node[part])
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def method_default(method: str):
    """What `--method NAME` (and a bench row naming only its method) runs: the built-in recipe named after
    the method where deepshrink ships one, which is that method's best recipe by validation accuracy
    (README, "Defaults"), else the method's own defaults."""
    return str(RECIPE_DIR / f"{method}.yaml") if method in list_recipes() else {"method": method}


def list_recipes() -> list[str]:
    """Names of the built-in recipes shipped in deepshrink/recipes/."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def select_layers(model: nn.Module, recipe: Recipe) -> dict[str, dict]:
    """Which Conv2d/Linear layers the method touches, with each layer's merged parameters.

    The first and last compressible layers are skipped when `keep_first_last` (the papers' default);
    overrides apply in order, later ones winning. Returns {module_name: params}.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)]
    if not names:
        raise UserError("the model has no Conv2d or Linear layer to compress")
    skipped = {names[0], names[-1]} if recipe.keep_first_last and len(names) > 1 else set()
    chosen: dict[str, dict] = {}
    for name in names:
        params = dict(recipe.params)
        skip = name in skipped
        for override in recipe.layers:
            if fnmatch.fnmatchcase(name, override.pattern):
                params.update(override.params)
                skip = override.skip
        if not skip:
            chosen[name] = params
    unmatched = [o for o in recipe.layers if not any(fnmatch.fnmatchcase(n, o.pattern) for n in names)]
    # a pattern that only keeps layers float, on a model without such layers, has nothing to do (a recipe for
    # ResNets' downsample projections on a LeNet); one that changes settings and matches nothing is a mistake
    settings = [o.pattern for o in unmatched if o.params or not o.skip]
    if settings:
        raise UserError(
            f"layer pattern(s) {settings} match no Conv2d/Linear layer; layers are: {', '.join(names)}"
        )
    if unmatched:
        warnings.warn(f"layer pattern(s) {[o.pattern for o in unmatched]} to keep in float match no Conv2d/Linear "
                      f"layer of this model: every layer is compressed as usual", UserWarning, stacklevel=2)
    return chosen
