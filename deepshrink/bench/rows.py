"""The default row runner: every benchmark row goes through `deepshrink.pipeline`, the code a user calls.

- Every row is `pipeline.run_compress(spec_from_row(task))`: compress, pack to `model.dsz`, reload, evaluate.
- The full-precision row is method `fp32` (`deepshrink.methods.Baseline`): the base checkpoint unchanged,
  packed at fp32, so its size and accuracy are measured by the same code as every compressed row's.
- A suite without a base checkpoint trains one with the one training loop (`deepshrink.engine.Trainer`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, _build
from .runner import RowTask
from .suite import Suite

# run_compress's figures -> the names results.jsonl uses
_RENAME = {"file_bytes": "bytes"}
_KEEP = ("top1", "top5", "val_top1", "val_top5", "file_bytes", "ratio", "macs", "bops", "compress_seconds",
         "epochs", "fp32_bytes", "val_top1_in_memory", "kind", "classes")


def run_row(task: RowTask) -> dict:
    """Run one planned row and return its figures (top1, top5, bytes, ratio, macs, bops, classes, ...).

    A training row cut off before it finished (a session's end, Ctrl-C, a killed process) left its
    `train/last.pt` in the row's folder, which is named by the row's key (every setting and the seed):
    the next run of the suite continues it from there (`resumed: true` in its record; `compress_seconds`
    then counts the last sitting only), so a row of several hours needs no single sitting. A saved
    recipe that is not the row's (a folder edited by hand) is not continued: the row starts afresh."""
    from ..pipeline import run_compress

    spec = spec_from_row(task)
    resumed = _can_continue(task.out_dir, spec.recipe)
    if resumed:
        spec = dataclasses.replace(spec, resume=True)
    metrics = run_compress(spec, data=task.data)  # data: a suite's own draws (bench.data)
    figures = {_RENAME.get(k, k): metrics[k] for k in _KEEP if metrics.get(k) is not None}
    return {**figures, "resumed": True} if resumed else figures


def _can_continue(row_dir: Path, recipe) -> bool:
    """Whether `row_dir` holds an unfinished training run of this very recipe."""
    from ..pipeline import saved_recipe_is

    return (row_dir / "train" / "last.pt").is_file() and saved_recipe_is(row_dir, recipe) is True


def spec_from_row(task: RowTask):
    """The run a planned row describes: the suite's model and data, the row's resolved recipe (a row planned
    without one, such as the full-precision reference, runs its method's defaults), the base checkpoint,
    the row's own folder. The base is scored once, by the reference row, not by every row."""
    from ..spec import run_spec
    from .data import data_root

    suite = task.suite
    recipe = task.row.recipe if task.row.recipe is not None else {"method": task.row.method}
    root = data_root(suite.data_spec, task.seed) if suite.data_spec else suite.data.get("root")  # a generated folder
    return run_spec(recipe, model=suite.model["name"], model_args=suite.model["args"], base=task.base,
                    data=suite.data["name"], data_root=root, out=task.out_dir, evaluate_base=False)


def train_base(suite: Suite, path: Path) -> None:
    """Train the suite's model from scratch as `base.train` says and save its state_dict at `path`.

    The training run lives beside it (`<path stem>-train/`); a run cut off (a session's end, Ctrl-C) is
    continued from its `last.pt` the next time the suite runs, so hours-long bases need no single sitting."""
    from ..engine import Trainer, seed_everything
    from ..engine.checkpoint import save_checkpoint
    from ..pipeline import build_data, build_model

    config = _build(TrainConfig, {"seed": suite.seed, **suite.base["train"]}, "suite base.train")
    bundle = build_data(suite.data["name"], suite.data.get("root"), batch_size=config.batch_size,
                        eval_batch_size=config.eval_batch_size, seed=config.seed, augment=config.augment)
    ds = bundle.dataset
    seed_everything(config.seed)  # the base's initial weights too: two demo runs give the same table
    model = build_model(suite.model["name"], suite.model["args"], num_classes=ds.num_classes,
                        in_channels=ds.in_channels)
    run_dir = path.parent / f"{path.stem}-train"
    last = run_dir / "last.pt"
    Trainer(model, bundle.train, bundle.val, config, run_dir=run_dir, resume=last if last.is_file() else None,
            meta={"model": suite.model, "data": suite.data["name"], "purpose": "bench base"}).fit()
    save_checkpoint(model.state_dict(), path)


def random_base(suite: Suite, path: Path) -> None:
    """Save the suite's model with its own initial weights, drawn with the suite's seed (`base: {random: true}`),
    as a state_dict at `path`. Built from `model:` alone: its `args` (e.g. num_classes) must suit the data."""
    from ..engine import seed_everything
    from ..engine.checkpoint import save_checkpoint
    from ..pipeline import build_model

    seed_everything(suite.seed)
    model = build_model(suite.model["name"], suite.model["args"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.state_dict(), path)
