"""`deepshrink report DIR`: print a benchmark's table in the terminal (and rebuild report.md / pareto.png)."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="show the results table of a `deepshrink bench` folder",
                       description="Print the table of DIR/results.jsonl, sorted by packed size with the "
                                   "full-precision row first, and rebuild DIR/report.md and DIR/pareto.png.")
    p.add_argument("dir", help="a folder written by `deepshrink bench` (holds results.jsonl)")
    p.add_argument("--markdown", action="store_true", help="print the Markdown report instead of the table")
    p.add_argument("--no-write", action="store_true", help="do not rebuild report.md and pareto.png")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.report import render_markdown, render_text, write_report
    from ..bench.results import RESULTS_FILE, current_results
    from ..bench.stale import stale_keys
    from ..errors import UserError

    folder = Path(args.dir)
    results = folder / RESULTS_FILE
    if not results.is_file():
        raise UserError(f"{results} does not exist; run `deepshrink bench --suite quick --out {folder}` first")
    records = current_results(folder)
    stale = stale_keys(folder)
    print(render_markdown(records, stale=stale) if args.markdown else render_text(records, stale))
    if not args.no_write:
        report, plot = write_report(folder)
        print(f"\nreport: {report}" + (f"\nplot:   {plot}" if plot else ""))
    return 0
