"""The default row runner: every benchmark row goes through `deepshrink.pipeline`, the code a user calls.

- A method row is `pipeline.run_compress(...)`: compress, pack to `model.dsz`, reload, evaluate.
- The full-precision row evaluates the base checkpoint and packs it as it is (fp32), so its size is
  measured the same way as every compressed row's.
- A suite without a base checkpoint trains one with the one training loop (`deepshrink.engine.Trainer`).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import TrainConfig, _build
from .runner import RowTask
from .suite import Suite

# run_compress's figures -> the names results.jsonl uses
_RENAME = {"file_bytes": "bytes"}
_KEEP = ("top1", "top5", "val_top1", "val_top5", "file_bytes", "ratio", "macs", "bops", "compress_seconds",
         "epochs", "fp32_bytes", "val_top1_in_memory", "kind")


def run_row(task: RowTask) -> dict:
    """Run one planned row and return its figures (top1, top5, bytes, ratio, macs, bops, ...)."""
    if task.row.is_baseline:
        return measure_baseline(task)
    from ..pipeline import run_compress
    from ..registry import METHODS

    suite = task.suite
    metrics = run_compress(task.row.recipe, model=suite.model["name"], data=suite.data["name"],
                           out_dir=task.out_dir, model_args=suite.model["args"], base=task.base,
                           data_root=suite.data.get("root"), evaluate_base=False, data_bundle=task.data)
    metrics["kind"] = METHODS.get(task.row.method).handler_cls.kind
    if metrics["kind"] == "layerwise":  # calibration data only; train.epochs is not theirs (PQ's own fine-tune is)
        metrics["epochs"] = task.row.recipe.get("params", {}).get("finetune_epochs", 0)
    return {_RENAME.get(k, k): metrics[k] for k in _KEEP if metrics.get(k) is not None}


def measure_baseline(task: RowTask) -> dict:
    """The full-precision reference: base accuracy, and its size packed at fp32 like any other row."""
    from .. import api
    from ..analysis import profile
    from ..pipeline import build_data, build_model, fp32_bytes

    suite = task.suite
    bundle = task.data or build_data(suite.data["name"], suite.data.get("root"), seed=suite.seed)
    ds = bundle.dataset
    net = build_model(suite.model["name"], suite.model["args"], task.base, num_classes=ds.num_classes,
                      in_channels=ds.in_channels)
    net.eval()
    task.out_dir.mkdir(parents=True, exist_ok=True)
    packed = task.out_dir / "model.dsz"
    api.pack(net, packed)
    reloaded = api.load(packed)
    val = api.evaluate(reloaded, bundle.val)
    from_file = api.evaluate(reloaded, bundle.test)
    size = ds.image_size if not isinstance(ds.image_size, int) else (ds.image_size, ds.image_size)
    totals = profile(reloaded, (ds.in_channels, *size)).totals
    file_bytes = os.path.getsize(packed)
    return {"top1": from_file["top1"], "top5": from_file["top5"], "val_top1": val["top1"],
            "val_top5": val["top5"], "bytes": file_bytes,
            "ratio": round(fp32_bytes(net) / file_bytes, 3), "macs": totals.get("macs"),
            "bops": totals.get("bops"), "compress_seconds": 0.0, "epochs": 0, "fp32_bytes": fp32_bytes(net),
            "classes": ds.num_classes}  # the plot's chance level


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
