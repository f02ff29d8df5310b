"""Run a suite row after row: resume from `results.jsonl`, record failures, show progress, refresh the report.

    summary = run_suite(load_suite("quick"), "runs/demo")

Each row goes through a *row runner* `(RowTask) -> dict of figures`; the default one
(`deepshrink.bench.rows.run_row`) calls `deepshrink.pipeline.run_compress`, the same code as
`deepshrink compress`. Tests pass a stub. After a row, its named measures (`deepshrink.bench.measures`)
add their figures to its record; a failing measure fails the row (it is retried on the next run).
Several processes may run one suite into one folder at once (one per core): each row is held by the process
running it (`_row_lock`), and the shared files are written under the folder's lock (`_folder_lock`).
"""
from __future__ import annotations

import fcntl
import json
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import UserError
from .measures import MeasureContext, run_measures, start_measures
from .plan import PlannedRow, plan_rows
from .results import BASE_FILE, PLAN_FILE, RESULTS_FILE, RUNS_FILE, append_result, finished_keys, read_results
from .suite import Suite, SuiteSkipped, base_checkpoint, file_digest, stable_hash

# figures scored against the data set's labels: dropped from the rows of a suite whose labels are not the model's
LABEL_FIGURES = ("top1", "top5", "val_top1", "val_top5", "val_top1_in_memory", "classes")


@dataclass
class RowTask:
    """Everything a row runner needs: the suite, the planned row, the base checkpoint, a folder of its own."""

    suite: Suite
    row: PlannedRow
    base: Path
    out_dir: Path
    seed: int
    data: object = None  # a pipeline.DataBundle when the suite draws its own images (bench.data), else None


def run_suite(suite: Suite, out_dir, *, base=None, only=None, epochs=None,
              row_runner: Callable[[RowTask], dict] | None = None,
              base_trainer: Callable[[Suite, Path], None] | None = None,
              log: Callable[[str], None] = print, command: str | None = None, methods=None) -> dict:
    """Run every row of `suite` not already finished in `out_dir/results.jsonl`; returns a summary.

    A failing row is recorded with `status: failed` and its error, and the suite goes on. After every
    row `report.md` and `pareto.png` are rewritten. Returns {"ran", "skipped", "failed", "total",
    "report", "plot"}.
    """
    from .rows import run_row, train_base

    out_dir = Path(out_dir)
    try:
        base_checkpoint(suite, base)  # a base in a package that is not installed: one line, nothing written
    except SuiteSkipped as exc:
        log(f"[bench] {exc}")
        return {"ran": 0, "skipped": 0, "failed": 0, "total": 0, "skipped_reason": str(exc),
                "report": out_dir / "report.md", "plot": out_dir / "pareto.png"}
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    with _folder_lock(out_dir, log):  # the base is resolved (trained, when the suite does) by one process
        t0 = time.perf_counter()  # includes training the base, when the suite does
        base_path, base_id = resolve_base(suite, out_dir, base, base_trainer or train_base, log)
        _record_base(out_dir, base_path, base_id)
        rows = plan_rows(suite, base_id, only=only, epochs=epochs, methods=methods)
        # the suite's current rows (all of them, not only --only's): the report shows these and hides rows
        # left in results.jsonl by an earlier version of the suite
        current = rows if not only else plan_rows(suite, base_id, epochs=epochs, methods=methods)
        append_result(out_dir / PLAN_FILE, {"suite": suite.name, "keys": [r.key for r in current]}, replace=True)
        done = finished_keys(read_results(results_path))
    inputs = _SharedInputs(suite, base_path, base_id, out_dir)
    todo = [r for r in rows if r.key not in done]
    log(f"[bench] suite {suite.name!r}: {len(rows)} rows, {len(rows) - len(todo)} already in "
        f"{results_path}, {len(todo)} to run")
    progress = _Progress(total=len(rows), already=len(rows) - len(todo), log=log)
    summary = {"ran": 0, "skipped": len(rows) - len(todo), "failed": 0, "total": len(rows), "elsewhere": 0}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        for row in todo:
            with _row_lock(out_dir, row.key) as mine:
                if mine:
                    with _folder_lock(out_dir, log):
                        mine = row.key not in finished_keys(read_results(results_path))
                if not mine:  # another `deepshrink bench` on this folder runs it, or has just finished it
                    log(f"[bench] {row.label}: run by another `deepshrink bench` on {out_dir}; left to it")
                    summary["elsewhere"] += 1
                    continue
                progress.start(row)
                record = _run_one(suite, row, inputs, out_dir, row_runner or run_row, command)
                with _folder_lock(out_dir, log):
                    append_result(results_path, record)
                    _refresh_report(out_dir, log)
            summary["ran"] += 1
            summary["failed"] += record["status"] != "ok"
            progress.finish(row, record)
        if not todo:
            with _folder_lock(out_dir, log):
                _refresh_report(out_dir, log)
    finally:  # RUNS_FILE: one line per invocation, so the results say which command made them and how long
        with _folder_lock(out_dir, log):
            append_result(out_dir / RUNS_FILE, {
                "command": command, "suite": suite.name, "started_at": started, "version": __version__,
                "seconds": round(time.perf_counter() - t0, 1), **summary,
                "complete": summary["ran"] == len(todo)})
    return {**summary, "report": out_dir / "report.md", "plot": out_dir / "pareto.png"}


def trained_base_id(suite: Suite) -> str:
    """The identity of a base the suite trains itself: its settings and the validation split it is chosen on."""
    from ..data.splits import VAL_RATIO, VAL_SEED

    return "trained:" + stable_hash({**suite.identity(), "train": suite.base["train"],
                                     "val_split": [VAL_RATIO, VAL_SEED]})


def trained_base_path(suite: Suite, out_dir: Path) -> Path:
    """Where the base a suite trains itself is kept: its `base.cache` folder, else `out_dir/base/`."""
    tag = trained_base_id(suite).split(":")[1]
    return _base_folder(suite, out_dir) / f"{suite.model['name']}-{suite.data['name']}-{tag}.pt"


def _base_folder(suite: Suite, out_dir: Path) -> Path:
    return Path(suite.base["cache"]).expanduser() if suite.base.get("cache") else Path(out_dir) / "base"


def random_base_id(suite: Suite) -> str:
    """The identity of a random base (`base: {random: true}`): the model and the seed its weights are drawn with."""
    return "random:" + stable_hash({"model": suite.model, "seed": suite.seed})


def random_base_path(suite: Suite, out_dir: Path) -> Path:
    """Where a random base is kept: `base.cache`, else `out_dir/base/` (as a trained base)."""
    return _base_folder(suite, out_dir) / f"{suite.model['name']}-random-{random_base_id(suite).split(':')[1]}.pt"


def resolve_base(suite: Suite, out_dir: Path, base, base_trainer, log) -> tuple[Path, str]:
    """The base checkpoint (given, from the suite, drawn at random or trained once, and cached in `base.cache` or
    `out_dir/base/`) and its id. A base whose training was cut off resumes from its last checkpoint (`train_base`)."""
    path = base_checkpoint(suite, base)
    if path is not None:
        if not path.is_file():
            raise UserError(f"base checkpoint {path} does not exist; give --base with a state_dict file")
        return path, "sha256:" + file_digest(path)
    if suite.base.get("random"):
        from .rows import random_base

        path = random_base_path(suite, out_dir)
        if not path.is_file():
            log(f"[bench] drawing the random base {suite.model['name']} (seed {suite.seed}) -> {path}")
            random_base(suite, path)
        return path, random_base_id(suite)
    if not suite.base.get("train"):
        raise UserError(f"suite {suite.name!r} has no base checkpoint and no `base.train:`; "
                        "give --base CHECKPOINT (a state_dict of the suite's model)")
    base_id = trained_base_id(suite)
    path = trained_base_path(suite, out_dir)
    if not path.exists():
        log(f"[bench] training the full-precision base {suite.model['name']} on {suite.data['name']} "
            f"({suite.base['train']}) -> {path}")
        start = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        base_trainer(suite, path)
        log(f"[bench] base trained in {_duration(time.perf_counter() - start)}")
    return path, base_id


def _record_base(out_dir: Path, path: Path, base_id: str) -> None:
    """OUT/base.json: which checkpoint the rows started from (its sha256), so results name their base even
    where the checkpoint itself is not committed (a base the suite trained, kept in a cache folder)."""
    record = {"id": base_id, "checkpoint": path.name, "sha256": file_digest(path), "bytes": path.stat().st_size}
    target = out_dir / BASE_FILE
    if not target.is_file() or json.loads(target.read_text()) != record:
        target.write_text(json.dumps(record, indent=1) + "\n")


def _run_one(suite: Suite, row: PlannedRow, inputs: "_SharedInputs", out_dir: Path, row_runner, command) -> dict:
    record = {"key": row.key, "suite": suite.name, "label": row.label, "method": row.method,
              "settings": row.settings(), "seed": suite.seed, "version": __version__,
              "base": str(inputs.base_path), "command": command}
    published = row.spec.published
    if published is not None:
        record["published"] = published
    if row.spec.target_drop is not None:
        record["target_drop"] = row.spec.target_drop
    spec = suite.data_spec
    start = time.perf_counter()
    try:
        if row.error:
            raise UserError(row.error)
        import torch

        row_dir = out_dir / "rows" / f"{_slug(row.label)}-{row.key}"
        data = None
        if spec is not None and spec.custom:
            from .data import describe

            data = inputs.bundle()  # built once per run
            record["data_note"] = describe(spec, len(data.dataset), len(inputs.eval_batches().dataset))
        elif spec is not None and spec.domain:  # a target domain: loaders built from the row's recipe
            from .domain import describe_domain, domain_bundle

            data = domain_bundle(spec, row.recipe)
            record["data_note"] = describe_domain(spec, data)
        started = start_measures(row.measures)  # just before the row: e.g. the memory high-water mark
        torch.manual_seed(suite.seed)
        figures = row_runner(RowTask(suite, row, inputs.base_path, row_dir, suite.seed, data)) or {}
        if spec is not None and not spec.labels:  # scored against classes that are not the model's
            figures = {k: v for k, v in figures.items() if k not in LABEL_FIGURES}
        if row.measures:
            figures.update(run_measures(row.measures, inputs.context(row_dir, started)))
        record.update({k: v for k, v in figures.items() if k not in record})
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, and the suite goes on
        record["status"] = "failed"
        record["error"] = row.error or f"{type(exc).__name__}: {exc}"
        record["traceback"] = "".join(traceback.format_exc(limit=6))[-3000:]
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


class _SharedInputs:
    """What rows and measures share in one run, each made on first use: the suite's own data (bench.data),
    the float base model, its logits on the evaluation images (also cached under `out_dir/base/`)."""

    def __init__(self, suite: Suite, base_path: Path, base_id: str, out_dir: Path):
        self.suite, self.base_path, self.base_id, self.out_dir = suite, base_path, base_id, out_dir
        self._bundle = self._eval = self._base = self._logits = None

    def bundle(self):
        """The DataBundle rows compress and evaluate with."""
        if self._bundle is None:
            spec = self.suite.data_spec
            if spec is not None and spec.custom:
                from .data import build_bundle

                self._bundle, self._eval = build_bundle(spec, self.suite.seed)
            elif spec is not None and spec.domain:
                from .domain import domain_bundle

                self._bundle = domain_bundle(spec, {"train": {"seed": self.suite.seed}})
                self._eval = self._bundle.test
            else:
                from ..pipeline import build_data

                self._bundle = build_data(self.suite.data["name"], self.suite.data.get("root"), seed=self.suite.seed)
                self._eval = self._bundle.test
        return self._bundle

    def eval_batches(self):
        """The evaluation images measures read: the suite's `eval` draw, or the data set's test split."""
        self.bundle()
        return self._eval

    def val_batches(self):
        """The validation images measures that choose or tune something read (the evaluation draw when the
        suite draws its own images)."""
        return self.bundle().val

    def base_model(self):
        if self._base is None:
            from ..pipeline import build_model

            ds = self.bundle().dataset
            self._base = build_model(self.suite.model["name"], self.suite.model["args"], self.base_path,
                                     num_classes=ds.num_classes, in_channels=ds.in_channels).eval()
        return self._base

    def base_logits(self):
        """The base model's logits on the evaluation images, computed once per base and data settings."""
        if self._logits is None:
            import torch

            from .measures import logits_of

            path = self.out_dir / "base" / f"logits-{stable_hash({**self.suite.identity(), 'base': self.base_id})}.pt"
            if path.is_file():
                self._logits = torch.load(path, weights_only=True)
            else:
                self._logits = logits_of(self.base_model(), self.eval_batches())
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self._logits, path)
        return self._logits

    def context(self, row_dir: Path, started: dict) -> MeasureContext:
        from .. import api

        spec = self.suite.data_spec
        return MeasureContext(lambda: api.load(row_dir / "model.dsz"), row_dir, self.base_model, self.eval_batches,
                              self.base_logits, started, val_batches=self.val_batches,
                              calib_batches=lambda: self.bundle().calib,
                              labels=spec.labels if spec is not None else True)


def _refresh_report(out_dir: Path, log) -> None:
    from .report import write_report

    try:
        write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - a report glitch must not stop a long benchmark
        log(f"[bench] warning: could not write the report: {type(exc).__name__}: {exc}")


@contextmanager
def _folder_lock(out_dir: Path, log):
    """Holds `out_dir/.bench.lock` while one process resolves the base or writes the folder's shared files
    (results, report, plan, runs), so several `deepshrink bench` processes can share one results folder:
    each takes the rows no other holds (`_row_lock`). Waits for the holder, saying so once."""
    with open(out_dir / ".bench.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[bench] waiting for another `deepshrink bench` writing to {out_dir} (it may be training the base)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _row_lock(out_dir: Path, key: str):
    """Yields True while this process holds row `key` (`out_dir/.locks/KEY`), False if another one does.
    The lock is the kernel's (flock): a process that dies, however it dies, lets go of it."""
    folder = out_dir / ".locks"
    folder.mkdir(exist_ok=True)
    with open(folder / key, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Progress:
    """One line when a row starts and one when it ends: rows done / total, elapsed time, ETA."""

    def __init__(self, total: int, already: int, log):
        self.total, self.done, self.log = total, already, log
        self.started = time.perf_counter()
        self.ran = 0

    def start(self, row: PlannedRow) -> None:
        self.row_start = time.perf_counter()
        self.log(f"[bench] row {self.done + 1}/{self.total}: {row.label} ({row.method}, key {row.key})")

    def finish(self, row: PlannedRow, record: dict) -> None:
        self.done += 1
        self.ran += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.ran * (self.total - self.done)
        if record["status"] == "ok":
            figures = [f"top-1 {record['top1']:.2f}%" if _is_number(record.get("top1")) else None,
                       _size(record.get("bytes")), f"{record['ratio']:.1f}x" if _is_number(record.get("ratio")) else None]
            outcome = ", ".join(f for f in figures if f)
        else:
            outcome = "FAILED: " + record["error"].splitlines()[0][:200]
        self.log(f"[bench] row {self.done}/{self.total} done in {_duration(time.perf_counter() - self.row_start)}: "
                 f"{outcome} | elapsed {_duration(elapsed)}, ETA {_duration(eta)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size(n) -> str | None:
    if not _is_number(n):
        return None
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower()).strip("-")[:40] or "row"
