"""QAT on the shared CIFAR-10 ResNet-20: accuracy drop of every method row, and training-step time.

Fine-tunes the shared full-precision ResNet-20 (option B, first conv and fc kept in float) with each
row's built-in recipe and appends one JSON line per finished row to
benchmarks/results/qat_cifar10.jsonl; rows already there with the same settings are skipped, so an
interrupted run resumes (a row in progress from its last finished epoch, kept in runs/qat_cifar10/).
Heavy: hold the shared lock::

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/qat_cifar10.py --only bwn,dorefa-w4a4 --epochs 1
    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/qat_cifar10.py --step-time

`--step-time` times one training step (forward, loss, backward, SGD step; batch 128) of the float
model and of each row's quantized model, interleaved round by round in one process (so machine load
hits all alike), medians -> benchmarks/results/qat_step_time.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import deepshrink
from deepshrink.config import load_recipe, select_layers
from deepshrink.data import get_dataset, make_loader, subset
from deepshrink.engine import evaluate
from deepshrink.engine.runlog import RunLog
from deepshrink.quant import calibrate
from deepshrink.registry import METHODS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"

# (row id = built-in recipe, bits W/A(/G), target top-1 drop in points) -- the table
ROWS = [("bwn", "1/32", 1.5), ("twn", "ternary/32", 1.0), ("ttq", "ternary/32", 0.8),
        ("dorefa-w1", "1/32", 1.5), ("dorefa-w2a2", "2/2", 3.0), ("dorefa-w4a4", "4/4", 0.8),
        ("dorefa-w4a4g8", "4/4/8", 2.0), ("xnor", "1/1", 12.0), ("lsq-w2a2", "2/2", 2.0),
        ("lsq-w3a3", "3/3", 0.8), ("pact-w4a4", "4/4", 0.8)]


def load_fp_model(checkpoint: str) -> nn.Module:
    model = deepshrink.create_model("resnet20", shortcut="B")
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def settings_key(row: dict) -> tuple:
    return (row["row"], float(row["epochs"]), row.get("train_subset"), row.get("seed", 0), row.get("tag"))


def prepared(recipe_name: str | dict, model: nn.Module, calib_batch) -> nn.Module:
    """The quantized training form of `model` under a recipe, quantizers initialised, not trained."""
    recipe = load_recipe(recipe_name)
    handler = METHODS.get(recipe.method).handler_cls(recipe, select_layers(model, recipe))
    model = handler.prepare(copy.deepcopy(model))
    calibrate(model, [calib_batch])
    return model.train()


def step_time(args, fp: nn.Module, batch) -> dict:
    """Median seconds of one SGD training step per model, interleaved round by round."""
    torch.set_num_threads(args.threads)
    inputs, targets = batch
    models = {"fp": copy.deepcopy(fp).train()}
    models.update({name: prepared(name, fp, batch) for name, _, _ in ROWS})
    optims = {n: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for n, m in models.items()}

    def one_step(name):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(models[name](inputs), targets)
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()
        return time.perf_counter() - start

    times = {name: [] for name in models}
    for r in range(args.warmup + args.rounds):
        for name in models:
            t = one_step(name)
            if r >= args.warmup:
                times[name].append(t)
    median = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    ratio = {n: round(median[n] / median["fp"], 3) for n in models if n != "fp"}
    return {"command": "flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/qat_cifar10.py --step-time "
                       f"--rounds {args.rounds} --threads {args.threads}",
            "batch_size": int(inputs.shape[0]), "threads": args.threads, "rounds": args.rounds,
            "step": "forward + cross-entropy + backward + SGD step, train mode",
            "median_ms": {n: round(1e3 * v, 2) for n, v in median.items()}, "ratio_vs_fp": ratio,
            "target": "<= 1.5x the full-precision step", "met": {n: r <= 1.5 for n, r in ratio.items()}}


def run_row(args, row_id: str, bits: str, target: float, fp: nn.Module, fp_top1: float, loaders) -> dict:
    train_loader, test_loader = loaders
    overrides = [f"train.epochs={args.epochs}", f"train.seed={args.seed}"] + list(args.set)
    start = time.perf_counter()
    # no per-epoch validation: one evaluation of the converted (integer-code) model at the end
    # the run folder keeps last.pt after every epoch: an interrupted row resumes at its last finished epoch
    subset = "" if args.train_subset is None else f"-sub{args.train_subset:g}"
    tag = "" if args.tag is None else f"-{args.tag}"
    run_dir = REPO / "runs/qat_cifar10" / f"{row_id}-e{args.epochs:g}-s{args.seed}{subset}{tag}"
    result = deepshrink.compress(fp, row_id, train_data=train_loader, overrides=overrides, out_dir=run_dir,
                                 resume=True)
    seconds = time.perf_counter() - start
    log = RunLog(run_dir, progress=False)
    log.load_history()  # every epoch's time, also those of a process that was interrupted and resumed
    result.metrics.update(evaluate(result.model, test_loader))
    drop = fp_top1 - result.metrics["top1"]
    reduced = args.epochs < 8 or args.train_subset is not None
    return {"row": row_id, "tag": args.tag, "overrides": list(args.set), "method": result.method, "bits": bits,
            "params": dataclasses.asdict(result.recipe.method_config()),
            "train": {k: v for k, v in dataclasses.asdict(result.recipe.train).items()
                      if k in ("optimizer", "lr", "weight_decay", "schedule", "distill", "distill_temperature")},
            "epochs": args.epochs,
            "train_subset": args.train_subset, "seed": args.seed, "train_images": args.train_images,
            "fp_top1": fp_top1, "top1": result.metrics["top1"], "drop": round(drop, 2), "target_drop": target,
            "met": drop <= target, "budget": "REDUCED (not the table's 8 epochs on 50k images)" if reduced else "full",
            "seconds": round(seconds, 1), "train_seconds": round(log.epoch_seconds(), 1),
            "threads": torch.get_num_threads(),
            "command": "flock /tmp/deepshrink-heavy.lock .venv/bin/python " + " ".join(sys.argv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache/deepshrink/cifar10-jpeg"))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared/models/resnet20-cifar10jpeg.pt"))
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--train-subset", type=float, default=None, help="stratified ratio of the 50k images")
    parser.add_argument("--only", default=None, help="comma-separated row ids: " + ",".join(r[0] for r in ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override on top of the row's built-in recipe (a tuning run; give --tag)")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after each row")
    parser.add_argument("--tag", default=None, help="label of a tuning variant, kept apart from the table's rows")
    parser.add_argument("--step-time", action="store_true", help="only measure training-step time")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.set and args.tag is None:
        parser.error("--set changes the recipe: name the variant with --tag")
    if any(s.partition("=")[0].strip() == "train.batch_size" for s in args.set):
        parser.error("every row trains from one loader at batch 128; train.batch_size cannot be overridden here")
    torch.manual_seed(args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)

    fp = load_fp_model(args.checkpoint)
    train = get_dataset("cifar10", "train", root=args.data_root)
    if args.train_subset is not None:
        train = subset(train, ratio=args.train_subset, seed=args.seed)
    args.train_images = len(train)
    train_loader = make_loader(train, 128, train=True, seed=args.seed)
    if args.step_time:
        report = step_time(args, fp, next(iter(train_loader)))
        (RESULTS / "qat_step_time.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return
    test_loader = make_loader(get_dataset("cifar10", "test", root=args.data_root), 500, train=False)

    path = RESULTS / "qat_cifar10.jsonl"
    done = {settings_key(r) for r in read_rows(path)}
    fp_rows = [r for r in read_rows(path) if r["row"] == "fp"]
    fp_top1 = fp_rows[-1]["top1"] if fp_rows else evaluate(fp, test_loader)["top1"]
    if not fp_rows:
        with path.open("a") as f:
            f.write(json.dumps({"row": "fp", "epochs": 0, "top1": fp_top1, "model": "resnet20-cifar10jpeg.pt"}) + "\n")
    wanted = set(args.only.split(",")) if args.only else {r[0] for r in ROWS}
    unknown = wanted - {r[0] for r in ROWS}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {[r[0] for r in ROWS]}")
    for row_id, bits, target in ROWS:
        key = (row_id, float(args.epochs), args.train_subset, args.seed, args.tag)
        if row_id not in wanted or key in done:
            continue
        row = run_row(args, row_id, bits, target, fp, fp_top1, (train_loader, test_loader))
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        if args.commit:
            rel = str(path.relative_to(REPO))
            label = row_id if args.tag is None else f"{row_id} ({args.tag})"
            subprocess.run(["git", "add", rel], cwd=REPO, check=False)
            subprocess.run(["git", "commit", "-q", "-m", f"QAT results: {label}, {args.epochs:g} epochs", "--", rel],
                           cwd=REPO, check=False)


if __name__ == "__main__":
    main()
