"""`deepshrink bench`: run every method on the same model and data, and report accuracy against size.

    from deepshrink.bench import load_suite, run_suite
    summary = run_suite(load_suite("quick"), "runs/demo")   # resumable; see runs/demo/report.md

A suite is YAML (`deepshrink/bench/suites/*.yaml`); each finished row is appended to
`results.jsonl`; `report.md` and `pareto.png` are rebuilt after every row. Figures beyond accuracy are
named measures (`bench.measures`); a suite may draw and prepare its own images (`bench.data`).
"""
from .pareto import pareto_front
from .plan import PlannedRow, plan_rows
from .plot import plot_pareto
from .report import render_markdown, render_text, write_report
from .results import append_result, read_results
from .runner import RowTask, run_suite
from .suite import RowSpec, Suite, load_suite, suite_names

__all__ = ["PlannedRow", "RowSpec", "RowTask", "Suite", "append_result", "load_suite", "pareto_front",
           "plan_rows", "plot_pareto", "read_results", "render_markdown", "render_text", "run_suite",
           "suite_names", "write_report"]
