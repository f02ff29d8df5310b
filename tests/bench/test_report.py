"""The report renders from any results file: missing figures, failed rows, no full-precision row."""
from __future__ import annotations

import json

from deepshrink.bench import render_text, write_report
from deepshrink.bench.report import table
from deepshrink.cli import main

FP = {"key": "fp", "method": "fp32", "label": "full precision", "status": "ok", "top1": 90.0, "top5": 99.5,
      "bytes": 250_000, "ratio": 1.0, "macs": 420_000, "suite": "toy", "command": "deepshrink bench --suite toy"}
SMALL = {"key": "a", "method": "dorefa", "label": "dorefa W2/A2", "status": "ok", "top1": 88.5, "bytes": 20_000,
         "settings": {"recipe": {"params": {"weight_bits": 2, "act_bits": 2}}}}
TINY = {"key": "b", "method": "bwn", "label": "bwn", "status": "ok", "top1": 89.0, "bytes": 9_000}
NO_SIZE = {"key": "c", "method": "lobs", "label": "lobs 50%", "status": "ok", "top1": 89.5}  # no bytes, no time
FAILED = {"key": "d", "method": "pq", "label": "pq", "status": "failed", "error": "RuntimeError: boom\nline 2"}
BARE = {"key": "e"}  # written by who knows what: no method, no status, no figures


def _write(tmp_path, records):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_table_order_deltas_and_published_drop():
    lines, notes, failed = table([SMALL, FAILED, TINY, FP, NO_SIZE])
    assert [line[1].rstrip(" ★") for line in lines] == ["full precision", "bwn", "dorefa W2/A2", "lobs 50%"]
    by_label = {line[1].rstrip(" ★"): line for line in lines}
    assert by_label["dorefa W2/A2"][4] == "-1.50"  # 88.5 - 90.0
    assert by_label["bwn"][4] == "-1.00"
    assert by_label["full precision"][4] == "—"
    # the seeds' W2/A2 figure, marked with its source note, named as a re-implementation
    assert by_label["dorefa W2/A2"][5] == "-16.30 [2]" and "W2/A2" in notes[1] and "re-implementation" in notes[1]
    assert by_label["bwn"][5] == "-1.20 [1]"
    assert by_label["dorefa W2/A2"][6] == "20.0 KB" and by_label["bwn"][7] == "—"
    assert [r["key"] for r in failed] == ["d"]


def test_pareto_star_marks_the_front():
    lines, _, _ = table([FP, SMALL, TINY])
    starred = [line[1] for line in lines if line[1].endswith("★")]
    # bwn is smaller and more accurate than dorefa W2/A2; the fp row is the most accurate
    assert starred == ["full precision ★", "bwn ★"]


def test_report_renders_with_missing_fields_and_failures(tmp_path):
    folder = _write(tmp_path, [FP, SMALL, NO_SIZE, FAILED, BARE])
    report, plot = write_report(folder)
    text = report.read_text()
    assert text.splitlines()[0] == "# deepshrink benchmark: toy"
    assert "`deepshrink bench --suite toy`" in text
    assert "| lobs | lobs 50% | 89.50 | — | -0.50 | — | — | — |" in text
    assert "- **pq** (pq): `RuntimeError: boom`" in text
    assert plot is not None and plot.read_bytes()[:4] == b"\x89PNG"


def test_a_row_the_current_code_plans_differently_is_marked_stale():
    lines, _, _ = table([FP, SMALL, TINY], stale={SMALL["key"]})
    labels = [line[1] for line in lines]
    assert sum(label.endswith("(stale)") for label in labels) == 1
    assert next(label for label in labels if label.startswith(SMALL["label"])).endswith("(stale)")


def test_stale_keys_compare_committed_rows_with_the_current_plan(tmp_path):
    import dataclasses

    from deepshrink.bench.plan import plan_rows
    from deepshrink.bench.runner import trained_base_id
    from deepshrink.bench.stale import stale_keys
    from deepshrink.bench.suite import load_suite

    suite = load_suite("quick")
    current = plan_rows(suite, trained_base_id(suite))[1]
    records = [{"key": current.key, "suite": "quick", "status": "ok", "top1": 80.0},
               {"key": "made-by-older-settings", "suite": "quick", "status": "ok", "top1": 80.0}]
    assert stale_keys(_write(tmp_path, records)) == {"made-by-older-settings"}
    at_seed_2 = plan_rows(dataclasses.replace(suite, seed=2), trained_base_id(dataclasses.replace(suite, seed=2)))[1]
    seeded = [{"key": at_seed_2.key, "suite": "quick", "status": "ok", "seed": 2}]
    assert stale_keys(_write(tmp_path, seeded)) == set()  # a --seed run is judged at its own seed


def test_rows_on_a_base_the_suite_trained_into_its_cache_folder_are_not_stale(tmp_path):
    from deepshrink.bench.plan import plan_rows
    from deepshrink.bench.runner import trained_base_id, trained_base_path
    from deepshrink.bench.stale import stale_keys
    from deepshrink.bench.suite import load_suite

    suite = load_suite("cifar10-resnet32")  # `base.cache: ~/.cache/deepshrink/bases`, trained when absent
    row = plan_rows(suite, trained_base_id(suite))[1]
    cached = str(trained_base_path(suite, tmp_path))  # where the suite keeps it: not under OUT/base/
    assert "/base/" not in cached
    records = [{"key": row.key, "suite": suite.name, "status": "ok", "top1": 85.0, "base": cached}]
    assert stale_keys(_write(tmp_path, records)) == set()


def test_report_without_any_usable_row(tmp_path):
    report, plot = write_report(_write(tmp_path, [FAILED, BARE]))
    assert "Failed rows (1)" in report.read_text()
    assert plot is None  # nothing to plot, and no crash
    assert render_text([]) == "no results yet"


def test_terminal_table_is_aligned(tmp_path):
    text = render_text([FP, SMALL, TINY, FAILED])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "setting", "top-1"]
    assert lines[2].startswith("fp32") and lines[3].startswith("bwn") and lines[4].startswith("dorefa")
    assert lines[2].index("90.00") == lines[3].index("89.00") == lines[0].index("top-1")
    assert "FAILED pq: RuntimeError: boom" in text


def test_cli_report_prints_the_table(tmp_path, capsys):
    folder = _write(tmp_path, [FP, SMALL])
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "dorefa W2/A2" in out and f"plot:   {folder / 'pareto.png'}" in out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "results.jsonl does not exist" in capsys.readouterr().err


def test_a_suite_seed_reaches_every_row_and_gives_new_rows():
    import dataclasses

    from deepshrink.bench.plan import plan_rows
    from deepshrink.bench.suite import load_suite

    suite = load_suite("quick")
    seed0 = plan_rows(suite, "base")
    seed2 = plan_rows(dataclasses.replace(suite, seed=2), "base")
    assert all(row.recipe["train"]["seed"] == 2 and row.recipe["calib"]["seed"] == 2 for row in seed2[1:])
    assert not {row.key for row in seed0} & {row.key for row in seed2}


def test_a_suite_without_labels_ranks_rows_by_agreement_with_the_float_model(tmp_path):
    fidelity = {"top1_agreement": 100.0, "logit_sqnr_db": None, "identical_logits": True}
    fp = {**FP, "top1": None, **fidelity}
    ldnq = {"key": "l", "method": "ldnq", "label": "L-DNQ", "status": "ok", "bytes": 7_000, "top1_agreement": 31.6,
            "logit_sqnr_db": 3.96, "settings": {"recipe": {"params": {"levels": 7}}}}  # has a published drop
    rtn = {"key": "r", "method": "ldnq_rtn", "label": "RTN", "status": "ok", "bytes": 7_000, "top1_agreement": 23.6,
           "logit_sqnr_db": 2.82}
    lines, notes, _ = table([fp, ldnq, rtn])
    assert [line[1] for line in lines] == ["full precision", "L-DNQ ★", "RTN"]  # fp32 agrees with itself: no point
    assert notes == []  # published top-1 drops say nothing about agreement
    assert [line[-2:] for line in lines] == [["100.0", "∞ (identical)"], ["31.6", "3.96"], ["23.6", "2.82"]]
    report, plot = write_report(_write(tmp_path, [fp, ldnq, rtn]))
    text = report.read_text()
    assert "| top-1 %" not in text and "| top-1 agreement % | logit SQNR dB |" in text and plot.is_file()
    assert "- top-1 agreement %, logit SQNR dB: Top-1 agreement with the float base model" in text
