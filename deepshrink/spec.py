"""A compress run, resolved once: `RunSpec`.

A `RunSpec` holds everything a run needs: the recipe (loaded and validated), the model (registered name,
parsed arguments, the checkpoint it starts from), the data (name, where it is, its splits and its
preprocessing), the device and the processes (rank and world size under torchrun).
`deepshrink.pipeline.run_compress(spec)` runs it; nothing after this module parses a recipe, a model
argument or a data set name again.

Every front end builds its spec through `run_spec`, the one place a run is validated:

    spec = run_spec("ldnq", model="lenet5", data="fashion-mnist", out="runs/ldnq")  # Python
    spec = spec_from_args(args)   # `deepshrink compress` flags (deepshrink.cli.compress)
    spec = spec_from_row(task)    # a `deepshrink bench` row (deepshrink.bench.rows)

`spec.to_dict()` is what `deepshrink compress --print-config` prints; `RunSpec.from_dict` reads it back.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Recipe, load_recipe
from .errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, its constructor arguments as given (num_classes and in_channels default
    to the data set's when left out) and the checkpoint whose weights it starts from."""

    name: str
    args: dict = field(default_factory=dict)
    base: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """A named data set, where to find it, and how a network sees it.

    `mean`, `std` (per channel, 0..1 pixel scale) and `input_shape` ([C, H, W]) are filled where they are
    known before reading any image: from the base checkpoint's record, else from the data set's format
    (`DatasetSpec.input_shape`) and published statistics (`deepshrink.data.STATS`); None means the data
    set supplies them when it is read.
    """

    name: str
    root: str | None = None
    download: bool = False
    train_subset: float | None = None  # a ratio in (0, 1] or an image count, of the training part
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def splits(self) -> dict:
        """Which images each loader reads (`deepshrink.data.splits`): validation held out of the
        training split, the test split scored once at the end."""
        from .data.splits import VAL_RATIO, VAL_SEED

        return {"train": {"split": "train", "minus": "val", "subset": self.train_subset},
                "val": {"split": "train", "ratio_per_class": VAL_RATIO, "seed": VAL_SEED},
                "test": {"split": "test"}}


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        values = {}
        for key, name in (("rank", "RANK"), ("world_size", "WORLD_SIZE"), ("local_rank", "LOCAL_RANK")):
            raw = os.environ.get(name, "1" if key == "world_size" else "0")
            try:
                values[key] = int(raw)
            except ValueError:
                raise UserError(f"environment variable {name}={raw!r} is not an integer; unset it, "
                                "or launch with torchrun, which sets it") from None
        return cls(**values)


@dataclass
class RunSpec:
    """One compress run, resolved and validated (build it with `run_spec`)."""

    recipe: Recipe
    model: ModelSpec
    data: DataSpec
    out: Path
    device: str = "cpu"
    processes: Processes = field(default_factory=Processes)
    evaluate_base: bool = True  # also score the uncompressed model (base_top1, drop)
    resume: bool = False  # continue an interrupted training run from out/train/last.pt

    def to_dict(self) -> dict:
        """The spec as plain YAML/JSON values: the model, the data with its splits, the device, the
        processes, the run folder, and the recipe with every method parameter spelled out (defaults
        included; the `recipe` part loads back with `load_recipe`)."""
        recipe = self.recipe.to_dict()
        recipe["params"] = dataclasses.asdict(self.recipe.method_config())
        data = self.data
        return plain_values({
            "model": dataclasses.asdict(self.model),
            "data": {"name": data.name, "root": data.root, "download": data.download,
                     "train_subset": data.train_subset, "splits": data.splits(),
                     "preprocessing": {"input_shape": data.input_shape, "mean": data.mean, "std": data.std}},
            "device": self.device, "processes": dataclasses.asdict(self.processes), "out": str(self.out),
            "evaluate_base": self.evaluate_base, "resume": self.resume, "recipe": recipe})

    @classmethod
    def from_dict(cls, shown: dict) -> RunSpec:
        """The spec `to_dict` (or `--print-config`) wrote, validated again by `run_spec`."""
        try:
            recipe, model, data, out = shown["recipe"], shown["model"], shown["data"], shown["out"]
            model_name, data_name = model["name"], data["name"]
        except (KeyError, TypeError) as exc:
            raise UserError(f"a run spec needs recipe, model: {{name}}, data: {{name}} and out; missing {exc}") \
                from None
        return run_spec(recipe, model=model_name, model_args=model.get("args"), base=model.get("base"),
                        data=data_name, data_root=data.get("root"), download=data.get("download", False),
                        train_subset=data.get("train_subset"), out=out, device=shown.get("device"),
                        evaluate_base=shown.get("evaluate_base", True), resume=shown.get("resume", False))


def run_spec(recipe, *, out, model: str | None = None, data: str | None = None, model_args=None,
             base=None, data_root=None, download: bool = False, train_subset=None, overrides=None,
             device=None, evaluate_base: bool = True, resume: bool = False) -> RunSpec:
    """Resolve and validate a compress run; every front end ends here.

    `recipe` is anything `load_recipe` takes (a Recipe, a dict, a YAML path, a built-in recipe or a method
    name) with `overrides` (`--set` items) applied. `model` and `data` default to what a `base` written
    by `deepshrink train` records (its model arguments too, with `model_args` added over them).
    `model_args` is a dict, "k=v,k=v" or a list of such. `device` defaults to the CPU; under torchrun a
    CUDA device becomes this process's GPU (LOCAL_RANK).

    Bad input raises `UserError` with one line naming the problem and the fix: an unknown method, model,
    model argument or data set; a data set in none of the places searched; a base that is missing, not a
    checkpoint, or records no architecture when no model is named; an unusable device.

    Example::

        spec = run_spec("bwn", model="lenet5", data="fashion-mnist", out="runs/bwn", overrides=["train.epochs=1"])
        metrics = deepshrink.run_compress(spec)
    """
    from .data.base import STATS
    from .data.datasets import DATASETS, canonical_name, check_available
    from .pipeline import parse_kv
    from .registry import check_model_args

    recipe = load_recipe(recipe, overrides)
    if out is None or not str(out).strip():
        raise UserError("no run folder given; pass --out DIR (out=...)")
    args = parse_kv(model_args)
    arch, record = _recorded(base)
    if model is None:
        if base is not None and arch is None:
            raise UserError(f"{base} does not record its architecture (a plain state_dict); say which network "
                            "it is with --model NAME (and --model-args K=V as it was built)")
        if arch is None:
            raise UserError("no model given; pass --model NAME (model=...), or --base CKPT written by "
                            "`deepshrink train` (it records its model)")
        model, args = arch["name"], {**arch["kwargs"], **args}
    check_model_args(model, args)
    if data is None:
        data = record.get("name")
        if data is None:
            raise UserError("no data set given; pass --data NAME (data=..., e.g. fashion-mnist)")
    name = canonical_name(data)
    check_available(name, data_root, download)
    if train_subset is not None and not (isinstance(train_subset, (int, float)) and train_subset > 0):
        raise UserError(f"train_subset must be a ratio in (0, 1] or an image count, got {train_subset!r}")
    if record.get("name") is None or canonical_name(record["name"]) != name:
        record = {}  # the base was trained on another data set: its preprocessing says nothing of this one
    mean, std = record.get("mean"), record.get("std")
    if mean is None and name in STATS:
        mean, std = STATS[name]
    input_shape = record.get("input_shape") or DATASETS[name].input_shape
    processes = Processes.from_env()
    return RunSpec(
        recipe=recipe, model=ModelSpec(model.lower(), args, None if base is None else str(base)),
        data=DataSpec(name, None if data_root is None else str(data_root), bool(download), train_subset,
                      _tuple(input_shape), _tuple(mean), _tuple(std)),
        out=Path(out), device=_device(device, processes), processes=processes,
        evaluate_base=bool(evaluate_base), resume=bool(resume))


def _recorded(base) -> tuple[dict | None, dict]:
    """(architecture, data record) a base checkpoint records; the file is checked here, not mid-run."""
    if base is None:
        return None, {}
    from .engine.checkpoint import read_checkpoint, recorded_model

    return recorded_model(read_checkpoint(base))


def _device(device, processes: Processes) -> str:
    """The device as torch spells it; under torchrun, a CUDA device is this process's GPU."""
    import torch

    try:
        parsed = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
        if processes.world_size > 1:
            parsed = torch.device("cuda", processes.local_rank)
    return str(parsed)


def _tuple(values) -> tuple | None:
    return None if values is None else tuple(values)


def plain_values(value):
    """Tuples as lists and keys as strings, all the way down: what YAML and JSON write and read back."""
    if isinstance(value, dict):
        return {str(k): plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    return value
