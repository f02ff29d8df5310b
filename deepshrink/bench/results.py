"""`results.jsonl`: one JSON record per finished row, appended as rows finish, read back on resume.

A record holds the row's identity (`key`), its settings and its figures::

    {"key": "3f2a...", "label": "DoReFa W2/A2", "method": "dorefa", "status": "ok",
     "top1": 88.1, "top5": 99.6, "bytes": 12345, "ratio": 23.5, "macs": 416000, "bops": ...,
     "compress_seconds": 41.2, "epochs": 1, "seed": 0, "version": "0.1.0", "settings": {...}}

Any figure may be missing (a row that failed, a result file written by an older version); readers
treat a missing field as unknown, never as zero. The file is append-only: a later record for the
same key supersedes an earlier one, and a line cut short by an interrupted write is ignored.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

RESULTS_FILE = "results.jsonl"
PLAN_FILE = "plan.json"  # the keys of the suite's rows as last run; older rows in results.jsonl are not shown
RUNS_FILE = "runs.jsonl"  # one record per `deepshrink bench` invocation: command, wall time, rows run
BASE_FILE = "base.json"  # the base checkpoint every row started from: its id, file name and sha256
FIGURES = ("top1", "top5", "bytes", "ratio", "macs", "bops", "compress_seconds", "epochs")


def append_result(path, record: dict, replace: bool = False) -> None:
    """Append one record and flush it to disk, so a crash right after a row never loses it.

    `replace` writes the file anew (atomically) with this one record instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str)
    if replace:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, path)
        return
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell():  # a previous write cut short leaves no newline: start a fresh line
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path) -> list[dict]:
    """All well-formed records of a results file, in file order ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: ignoring a line that is not JSON (an interrupted write?)")
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The last record of every row key (a re-run row supersedes its earlier attempts), in that order."""
    latest: dict[str, dict] = {}
    for record in records:
        key = record.get("key") or f"line-{len(latest)}"
        latest.pop(key, None)
        latest[key] = record
    return latest


def finished_keys(records: list[dict]) -> set[str]:
    """Keys of rows that completed successfully; these are never recomputed. Failed rows are retried."""
    return {key for key, record in latest_by_key(records).items() if record.get("status") == "ok"}


def current_results(folder) -> list[dict]:
    """The records of `folder/results.jsonl` that belong to the suite as it was last run (see PLAN_FILE);
    all records when there is no plan file."""
    folder = Path(folder)
    records = read_results(folder / RESULTS_FILE)
    plans = read_results(folder / PLAN_FILE)
    if not plans or not isinstance(plans[-1].get("keys"), list):
        return records
    keys = set(plans[-1]["keys"])
    return [r for r in records if r.get("key") in keys]
