"""Stale results: committed rows whose settings the current code no longer resolves to.

A row's key hashes everything that decides its result (the suite, the base model, the resolved recipe).
When a recipe, a default or the suite changes, the same row planned today gets another key; a record
still carrying the old key was produced by settings the code no longer runs, and the report and the
README mark it as stale until the suite is run again.

Example::

    stale = stale_keys(Path("benchmarks/results/quick"))   # set of record keys, or None if unknown
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .results import PLAN_FILE, read_results
from .suite import SuiteSkipped, base_checkpoint, file_digest, load_suite


def planned_keys(suite, base: str | None) -> set[str] | None:
    """The keys the current code gives the suite's rows, for its base (None when the base cannot be identified)."""
    from .plan import plan_rows
    from .runner import random_base_id, trained_base_id, trained_base_path

    # the records' base, unless one the suite drew or trained itself (in OUT/base/, or its `base.cache` folder)
    own = suite.base.get("train") and base and Path(base).name == trained_base_path(suite, Path(".")).name
    recorded = base if base and "/base/" not in base and not own else None
    try:
        path = base_checkpoint(suite) if suite.base.get("checkpoint") else base_checkpoint(suite, recorded)
    except SuiteSkipped:  # its base's package is not installed here
        return None
    if path is not None:
        if not path.is_file():
            return None
        base_id = "sha256:" + file_digest(path)
    elif suite.base.get("train"):
        base_id = trained_base_id(suite)
    elif suite.base.get("random"):
        base_id = random_base_id(suite)
    else:
        return None
    return {row.key for row in plan_rows(suite, base_id)}


def stale_keys(folder) -> set[str] | None:
    """Keys of the records in `folder/results.jsonl` that the current code would plan differently;
    None when the suite or its base cannot be resolved here (nothing can be said)."""
    folder = Path(folder)
    records = read_results(folder / "results.jsonl")
    plans = read_results(folder / PLAN_FILE)
    name = (plans[-1].get("suite") if plans else None) or next((r.get("suite") for r in records if r.get("suite")),
                                                               None)
    if not name:
        return None
    try:
        suite = load_suite(name)
    except Exception:  # noqa: BLE001 - a suite renamed or removed since: nothing to compare with
        return None
    seed = next((r.get("seed") for r in reversed(records) if isinstance(r.get("seed"), int)), None)
    if seed is not None and seed != suite.seed:  # run with `deepshrink bench --seed N`
        suite = dataclasses.replace(suite, seed=seed)
    base = next((r.get("base") for r in reversed(records) if r.get("base")), None)
    keys = planned_keys(suite, base)
    if keys is None:
        return None
    return {r["key"] for r in records if r.get("key") and r["key"] not in keys}
