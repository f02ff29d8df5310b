"""`deepshrink bench`: run a benchmark suite (resumable), then print its table and the plot's path."""
from __future__ import annotations

import dataclasses
import shlex
import sys


def add_parser(sub) -> None:
    from ..bench.suite import suite_names

    p = sub.add_parser("bench", help="run every method of a suite on one model; report accuracy against size",
                       description="Run the rows of a benchmark suite one after another. Each finished row is "
                                   "appended to OUT/results.jsonl, so running the same command again resumes "
                                   "where it stopped; OUT/report.md and OUT/pareto.png are rebuilt after "
                                   "every row. Exit status 1 when a row failed (it is recorded with its error).")
    p.add_argument("--suite", required=True, help=f"a shipped suite ({', '.join(suite_names())}) or a suite YAML file")
    p.add_argument("--out", required=True, help="results folder (created; reused to resume)")
    p.add_argument("--base", help="full-precision checkpoint every row starts from (overrides the suite's)")
    p.add_argument("--only", help="comma-separated methods, shipped recipe names or row labels to run, e.g. lsq or "
                                  "dorefa-w8a8, or one row's whole label even if it has commas (the "
                                  "full-precision row always runs)")
    p.add_argument("--epochs", type=float, default=None, help="fine-tune epochs for every row (overrides the "
                                                              "suite's budgets; changes the rows' identity)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every row (training order, initial state, calibration subset) instead of the "
                        "suite's; a new seed gives new rows, so run each seed into its own --out")
    p.add_argument("--list", action="store_true", help="list the suite's rows and whether each is done, then exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import load_suite, run_suite

    suite = load_suite(args.suite)
    if args.seed is not None:
        suite = dataclasses.replace(suite, seed=args.seed)
    only = args.only or None
    if args.list:
        return list_rows(suite, args)
    summary = run_suite(suite, args.out, base=args.base, only=only, epochs=args.epochs,
                        command=_command(args), log=_log)
    if summary.get("skipped_reason"):  # already said in one line; not a failure (a machine without the extra)
        return 0
    print_table(args.out, summary)
    return 1 if summary["failed"] else 0


def list_rows(suite, args) -> int:
    from pathlib import Path

    from ..bench.plan import plan_rows
    from ..bench.results import RESULTS_FILE, latest_by_key, read_results
    from ..bench.runner import random_base_id, resolve_base, trained_base_id, trained_base_path

    from ..bench.suite import SuiteSkipped

    untrained = not (args.base or suite.base.get("checkpoint")) and suite.base.get("train") and \
        not trained_base_path(suite, args.out).is_file()
    if suite.base.get("random") and not args.base:  # known from the model and seed, nothing to draw yet
        base_id = random_base_id(suite)
    elif untrained:  # the rows' keys name such a base by its settings: they are known before it is trained
        base_id = trained_base_id(suite)
        print(f"base: not trained yet ({trained_base_path(suite, args.out)}); the first run of the suite trains it")
    else:
        try:
            base, base_id = resolve_base(suite, Path(args.out), args.base, _no_training, _log)
        except SuiteSkipped as exc:  # as `bench` without --list: one line, not a failure
            _log(f"[bench] {exc}")
            return 0
    latest = latest_by_key(read_results(Path(args.out) / RESULTS_FILE))
    rows = plan_rows(suite, base_id, only=args.only or None, epochs=args.epochs)
    for i, row in enumerate(rows, 1):
        status = latest.get(row.key, {}).get("status", "to run")
        print(f"{i:3d}. [{status:7s}] {row.label:32s} {row.method:10s} key {row.key}"
              + (f"  ({row.error})" if row.error else ""))
    return 0


def _no_training(suite, path):
    from ..errors import UserError

    raise UserError(f"the base of suite {suite.name!r} is not trained yet ({path}); run the suite once")


def print_table(out_dir, summary: dict) -> None:
    """The finished table, then where the report and plot are."""
    from pathlib import Path

    from ..bench.report import render_text
    from ..bench.results import current_results
    from ..bench.stale import stale_keys

    print()
    print(render_text(current_results(out_dir), stale_keys(out_dir)))
    print()
    elsewhere = f", {summary['elsewhere']} left to another bench on this folder" if summary.get("elsewhere") else ""
    print(f"{summary['ran']} rows run now, {summary['skipped']} reused from earlier runs, "
          f"{summary['failed']} failed{elsewhere}, {summary['total']} in the suite")
    print(f"report: {summary['report']}")
    if Path(summary["plot"]).exists():
        print(f"plot:   {summary['plot']}")


def _command(args, name: str = "bench") -> str:
    """The command line that reproduces this run, as recorded in results.jsonl and runs.jsonl."""
    words = ["deepshrink", name]
    for flag in ("suite", "out", "base", "only", "epochs", "seed"):
        value = getattr(args, flag, None)
        if value is not None and not (name == "demo" and flag == "out" and value == "runs/demo"):
            words += [f"--{flag}", f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
