"""Fresh-seed figures: one suite run at several seeds (one results folder each), summarised per row.

Every row is reported as the mean ± sample standard deviation of its test top-1 over the seeds, beside
the binomial standard error of one such figure (sqrt(p (1 - p) / n) for n test images: the noise of
the test set itself), the mean validation top-1, and the mean drop against each seed's own
full-precision row, judged against the row's `target_drop`.

Example::

    rows = summarise([Path("benchmarks/results/cifar10-seed2"), Path("benchmarks/results/cifar10-seed3")])
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..errors import UserError
from .results import current_results, latest_by_key
from .suite import BASELINE


def summarise(folders: list[Path]) -> list[dict]:
    """Per row label (in the first folder's order): seeds, test top-1s, drops, val top-1s, target.
    A row found at the same seed in two folders is an error: it would count as two seeds."""
    rows: dict[str, dict] = {}
    where: dict[tuple, Path] = {}
    for folder in folders:
        records = [r for r in latest_by_key(current_results(folder)).values() if r.get("status") == "ok"]
        base = next((r for r in records if r.get("method") == BASELINE), None)
        for record in records:
            if record is base or not isinstance(record.get("top1"), (int, float)):
                continue
            row = rows.setdefault(record.get("label") or record.get("method"), {
                "method": record.get("method"), "seeds": [], "top1": [], "drop": [], "val_top1": [],
                "target_drop": record.get("target_drop"), "val_by_seed": {}})
            label_seed = (record.get("label") or record.get("method"), record.get("seed"))
            if label_seed in where:
                raise UserError(f"{label_seed[0]!r} at seed {label_seed[1]} is in both {where[label_seed]} and "
                                f"{folder}: keep one seed's rows in one folder (several `deepshrink bench` "
                                "processes may share it)")
            where[label_seed] = folder
            row["seeds"].append(record.get("seed"))
            row["top1"].append(record["top1"])
            if base is not None:
                row["drop"].append(base["top1"] - record["top1"])
            if isinstance(record.get("val_top1"), (int, float)):
                row["val_top1"].append(record["val_top1"])
                row["val_by_seed"][record.get("seed")] = record["val_top1"]
    return [{"label": label, **row} for label, row in rows.items()]


def markdown(rows: list[dict], n_test: int) -> list[str]:
    """The summary as a Markdown table (one line per row)."""
    out = ["| row | method | seeds | test top-1 (mean ± std) | ± binomial SE | val top-1 | drop (mean ± std) "
           "| target drop | |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        mean = statistics.fmean(row["top1"])
        error = math.sqrt(mean / 100 * (1 - mean / 100) / n_test) * 100
        drop = mean_std(row["drop"])
        target = row.get("target_drop")
        met = "" if target is None or not row["drop"] else \
            ("met" if statistics.fmean(row["drop"]) <= target else "**missed**")
        val = f"{statistics.fmean(row['val_top1']):.2f}" if row["val_top1"] else "—"
        out.append(f"| {row['label']} | {row['method']} | {', '.join(str(s) for s in row['seeds'])} | "
                   f"{mean_std(row['top1'])} | {error:.2f} | {val} | {drop} | "
                   f"{'' if target is None else format(target, 'g')} | {met} |")
    return out


def mean_std(values: list[float]) -> str:
    """Mean ± sample std of per-seed figures ("86.46 ± 0.27"); one value says "(one seed)", none "—"."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f} (one seed)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


PAPER = " (paper recipe)"  # the label suffix of a row that runs a method's paper-faithful settings


def recipe_choices(rows: list[dict]) -> list[dict]:
    """Each shipped default beside its paper-faithful recipe: the summary rows labelled L and
    "L (paper recipe)", compared on mean validation top-1 over the seeds both have run (the test set
    plays no part). `default_wins` is None while either has no run."""
    by_label = {row["label"]: row for row in rows}
    choices = []
    for label, row in by_label.items():
        if not label.endswith(PAPER) or label[:-len(PAPER)] not in by_label:
            continue
        default = by_label[label[:-len(PAPER)]]
        seeds = sorted(set(default["val_by_seed"]) & set(row["val_by_seed"]), key=str)
        means = [statistics.fmean(r["val_by_seed"][s] for s in seeds) if seeds else None for r in (default, row)]
        choices.append({"label": default["label"], "method": default["method"], "seeds": seeds,
                        "default_val": means[0], "paper_val": means[1],
                        "default_wins": None if not seeds else means[0] >= means[1]})
    return choices
