"""The benchmark report: a table sorted by packed size (full precision first) and the Pareto plot.

`write_report(DIR)` rebuilds `DIR/report.md` and `DIR/pareto.png` from `DIR/results.jsonl`;
`render_text(records)` is the same table for a terminal (`deepshrink report DIR`). Every figure may be
missing from a record: it is shown as unknown, never as zero. The figures of named measures
(`bench.measures`) follow as columns headed as their measure says. In a suite whose labels are not the
model's (no row has a top-1) the top-1 columns go, and top-1 agreement with the float model takes top-1's
place on the Pareto front and the plot.
"""
from __future__ import annotations

import math
from pathlib import Path

from .measures import MEASURES
from .pareto import pareto_front
from .plot import plot_pareto
from .published import published_drop
from .results import RESULTS_FILE, current_results, latest_by_key
from .stale import stale_keys
from .suite import BASELINE

COLUMNS = ["method", "setting", "top-1 %", "val top-1 %", "Δ top-1", "Δ reported elsewhere", "size", "ratio",
           "MACs", "BOPs", "time", "epochs"]
LABEL_COLUMNS = ("top-1 %", "val top-1 %", "Δ top-1", "Δ reported elsewhere")  # scored against the data's labels


def label_free(records: list[dict]) -> bool:
    """True when no row has a top-1 but some row has a top-1 agreement: a suite whose labels are not the
    model's classes (`data: {labels: false}`)."""
    return not any(_num(r.get("top1")) is not None for r in records) and \
        any(_num(r.get("top1_agreement")) is not None for r in records)


def score(record: dict, labels: bool = True):
    """The figure the Pareto front and plot rank rows by: top-1, or top-1 agreement without labels."""
    return _num(record.get("top1" if labels else "top1_agreement"))


def columns(records: list[dict]) -> list[str]:
    """The table's columns: COLUMNS (without the top-1 ones in a label-free suite), then one per measure
    figure that some record holds, in the measures' registration order."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    base = [c for c in COLUMNS if c not in LABEL_COLUMNS] if label_free(ok) else list(COLUMNS)
    return base + [heading for _, heading, _ in _measure_figures(ok)]


def _measure_figures(records: list[dict]) -> list[tuple[str, str, object]]:
    """(record field, heading, format) of every measure figure present in `records`."""
    return [(name, heading, fmt) for measure in MEASURES.values() for name, (heading, fmt) in measure.figures.items()
            if any(name in r for r in records)]


def split_records(records: list[dict]) -> tuple[dict | None, list[dict], list[dict]]:
    """(full-precision record or None, successful rows sorted by size, failed rows) from raw records."""
    latest = list(latest_by_key(records).values())
    ok = [r for r in latest if r.get("status", "ok") == "ok"]
    failed = [r for r in latest if r.get("status", "ok") != "ok"]
    baseline = next((r for r in reversed(ok) if r.get("method") == BASELINE), None)
    others = [r for r in ok if r is not baseline]
    others.sort(key=lambda r: (_num(r.get("bytes")) is None, _num(r.get("bytes")) or 0, r.get("label", "")))
    return baseline, others, failed


def table(records: list[dict], stale: set[str] | None = None) -> tuple[list[list[str]], list[str], list[dict]]:
    """Rows of display strings (FP first, then by size), the published-source footnotes, failed rows.

    Rows whose key is in `stale` (see bench.stale) are labelled "(stale)"."""
    stale = stale or set()
    baseline, others, failed = split_records(records)
    fp_top1 = _num(baseline.get("top1")) if baseline else None
    rows = [baseline] if baseline else []
    rows += others
    labels = not label_free(rows)
    # without labels the full-precision row agrees with itself by definition: it is no point on the front
    ranked = rows if labels else others
    front = {id(ranked[i]) for i in pareto_front([(_num(r.get("bytes")), score(r, labels)) for r in ranked])}
    wanted = columns(rows)
    figures = _measure_figures(rows)
    notes: list[str] = []
    lines = []
    for r in rows:
        top1 = _num(r.get("top1"))
        delta = top1 - fp_top1 if top1 is not None and fp_top1 is not None and r is not baseline else None
        pub = published_drop(r) if r is not baseline and labels else None  # drops are top-1 points
        pub_text = "—"
        if pub and _num(pub.get("drop")) is not None:
            source = str(pub.get("source", "published"))
            if source not in notes:
                notes.append(source)
            pub_text = f"{-_num(pub['drop']):+.2f} [{notes.index(source) + 1}]"
        label = str(r.get("label") or r.get("method") or "?") + (" ★" if id(r) in front else "")
        label += " (stale)" if r.get("key") in stale else ""
        cells = [str(r.get("method", "?")), label, _fmt(top1, "{:.2f}"), _fmt(_num(r.get("val_top1")), "{:.2f}"),
                 _fmt(delta, "{:+.2f}"), pub_text,
                 _bytes(r.get("bytes")), _fmt(_num(r.get("ratio")), "{:.1f}x"), _count(r.get("macs")),
                 _count(r.get("bops")), _secs(r.get("compress_seconds", r.get("wall_seconds"))),
                 _fmt(_num(r.get("epochs")), "{:g}")]
        by_heading = dict(zip(COLUMNS, cells))
        by_heading.update({heading: _cell(r, name, fmt) for name, heading, fmt in figures})
        lines.append([by_heading[c] for c in wanted])
    return lines, notes, failed


def _cell(record: dict, name: str, fmt) -> str:
    """A measure figure as its measure formats it: a pattern ("{:.1f}") or a function of the record."""
    if callable(fmt):
        return fmt(record)
    value = record.get(name)
    if _num(value) is not None:
        return fmt.format(value)
    return "—" if value is None else str(value)


def render_markdown(records: list[dict], title: str = "", stale: set[str] | None = None) -> str:
    """The report as Markdown: header, table, published-source notes, failed rows, the plot."""
    meta = next((r for r in reversed(records) if r.get("command")), None) or \
        next((r for r in reversed(records) if r.get("suite")), {})
    out = [f"# {title or 'deepshrink benchmark: ' + str(meta.get('suite', '?'))}", ""]
    if meta.get("command"):
        out += [f"Produced by `{meta['command']}` (deepshrink {meta.get('version', '?')}, seed "
                f"{meta.get('seed', '?')}); every row's settings are in `{RESULTS_FILE}`.", ""]
    if meta.get("data_note"):
        out += [f"Data: {meta['data_note']}", ""]
    what = "top-1 agreement with the float model" if label_free(records) else "accuracy"
    out += [markdown_table(records, stale=stale), "", f"![{what} against packed size](pareto.png)", ""]
    return "\n".join(out)


def markdown_table(records: list[dict], heading_level: int = 2, stale: set[str] | None = None) -> str:
    """The results table in Markdown with its legend, published-source notes and failed rows."""
    lines, notes, failed = table(records, stale)
    heads = columns(records)
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    if label_free(records):
        out += ["", "No top-1: this suite's data labels are not the model's classes. ★: on the Pareto front (no other "
                "row is both smaller and agrees more often with the float model). size: bytes of the packed `.dsz` "
                "file; ratio: against the fp32 weights; time: compression wall time on this machine."]
    else:
        out += ["", "top-1: the test split, scored once at the end; val top-1: the validation split held out of the "
                "training data, on which every choice was made. Δ top-1: test points against the full-precision row, "
                "on this suite's data. ★: on the Pareto front "
                "(no other row is both smaller and more accurate). size: bytes of the packed `.dsz` file; "
                "ratio: against the fp32 weights; time: compression wall time on this machine."]
    shown = {heading for _, heading, _ in _measure_figures(records)}
    legend = [(", ".join(h for h, _ in m.figures.values() if h in shown), m.doc) for m in MEASURES.values()]
    out += ([""] + [f"- {heads}: {doc}" for heads, doc in legend if heads]) if shown else []
    if stale and any(line[1].endswith("(stale)") for line in lines):
        out += ["", "(stale): made by settings the current code no longer resolves this row to; run the suite again."]
    if notes:
        out += ["", "Δ reported elsewhere: by others, on the network and data each note names (not this suite's), "
                "for orientation only:"]
        out += [f"[{i}] {note}" + ("  " if i < len(notes) else "") for i, note in enumerate(notes, 1)]
    if failed:
        out += ["", f"{'#' * heading_level} Failed rows ({len(failed)})", ""]
        out += [f"- **{r.get('label', r.get('method', '?'))}** ({r.get('method', '?')}): "
                f"`{_first_line(r.get('error'))}`" for r in failed]
    return "\n".join(out)


def render_text(records: list[dict], stale: set[str] | None = None) -> str:
    """The same table with aligned columns, for a terminal."""
    lines, notes, failed = table(records, stale)
    if not lines and not failed:
        return "no results yet"
    heads = columns(records)
    grid = [heads] + lines
    widths = [max(len(row[i]) for row in grid) for i in range(len(heads))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in grid]
    text.insert(1, "  ".join("-" * w for w in widths))
    text += ["", ("no top-1: the data's labels are not the model's classes" if label_free(records) else
                  "Δ top-1 vs the full-precision row") + "; ★ on the Pareto front; size = packed .dsz file."]
    text += [f"reported elsewhere [{i}] (their network and data, not this suite's): {note}"
             for i, note in enumerate(notes, 1)]
    for r in failed:
        text.append(f"FAILED {r.get('label', r.get('method', '?'))}: {_first_line(r.get('error'))}")
    return "\n".join(text)


def write_report(out_dir, title: str = "") -> tuple[Path, Path | None]:
    """Rewrite `out_dir/report.md` and `out_dir/pareto.png` from `out_dir/results.jsonl`."""
    out_dir = Path(out_dir)
    records = current_results(out_dir)
    baseline, others, _ = split_records(records)
    report = out_dir / "report.md"
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(render_markdown(records, title, stale_keys(out_dir)))
    tmp.replace(report)
    suite = next((r["suite"] for r in reversed(records) if r.get("suite")), out_dir.name)
    classes = _num(baseline.get("classes")) if baseline else None
    if label_free(records):  # agreement in top-1's place; the float row agrees with itself: not drawn
        plot = plot_pareto([{**r, "top1": r.get("top1_agreement")} for r in others], out_dir / "pareto.png",
                           title=f"deepshrink bench {suite}: top-1 agreement with the float model against packed size",
                           ylabel="top-1 agreement with the float model (%)")
    else:
        plot = plot_pareto(([baseline] if baseline else []) + others, out_dir / "pareto.png",
                           title=f"deepshrink bench {suite}: top-1 against packed size",
                           chance=100 / classes if classes else None)
    return report, plot


def _num(value):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _bytes(value) -> str:
    n = _num(value)
    if n is None:
        return "—"
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def _count(value) -> str:
    n = _num(value)
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _secs(value) -> str:
    n = _num(value)
    return "—" if n is None else f"{n:.1f} s" if n < 100 else f"{n / 60:.1f} min"


def _first_line(text) -> str:
    lines = str(text or "unknown error").strip().splitlines() or ["unknown error"]
    return lines[0][:300].replace("`", "'")
