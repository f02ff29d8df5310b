"""run_suite: resume without recomputing, failures recorded while the suite goes on, base trained once."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from deepshrink.bench import load_suite, read_results, run_suite
from deepshrink.errors import UserError


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base.pt"
    path.write_bytes(b"pretend state_dict")
    return path


def _run(suite, out, runner, **kw):
    return run_suite(load_suite(suite), out, row_runner=runner, log=lambda m: None, **kw)


def test_resume_skips_finished_rows(tmp_path, toy_suite, stub_runner, base_file):
    first = stub_runner()
    summary = _run(toy_suite(), tmp_path / "out", first, base=base_file)
    assert first.calls == ["full precision", "toya bits=1", "toya bits=4", "toyb"]
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (4, 0, 0)
    second = stub_runner()
    summary = _run(toy_suite(), tmp_path / "out", second, base=base_file)
    assert second.calls == []  # nothing recomputed
    assert (summary["ran"], summary["skipped"]) == (0, 4)
    records = read_results(tmp_path / "out" / "results.jsonl")
    assert len(records) == 4 and len({r["key"] for r in records}) == 4
    row = next(r for r in records if r["label"] == "toya bits=4")
    assert row["status"] == "ok" and row["bytes"] == 4000 and row["method"] == "toya"
    assert row["settings"]["recipe"]["params"] == {"bits": 4}
    assert row["settings"]["recipe"]["train"]["epochs"] == 1  # the recipe resolved with its defaults
    assert row["seed"] == 0 and row["version"]


def test_interrupted_run_resumes_where_it_stopped(tmp_path, toy_suite, stub_runner, base_file):
    with pytest.raises(KeyboardInterrupt):
        _run(toy_suite(), tmp_path / "out", stub_runner(interrupt_at=3), base=base_file)
    assert [r["label"] for r in read_results(tmp_path / "out" / "results.jsonl")] == ["full precision", "toya bits=1"]
    again = stub_runner()
    _run(toy_suite(), tmp_path / "out", again, base=base_file)
    assert again.calls == ["toya bits=4", "toyb"]


def test_failing_row_is_recorded_and_the_suite_goes_on(tmp_path, toy_suite, stub_runner, base_file):
    runner = stub_runner(fail={"toya bits=1"})
    summary = _run(toy_suite(), tmp_path / "out", runner, base=base_file)
    assert runner.calls == ["full precision", "toya bits=1", "toya bits=4", "toyb"]
    assert summary["failed"] == 1
    records = {r["label"]: r for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert records["toya bits=1"]["status"] == "failed"
    assert records["toya bits=1"]["error"] == "RuntimeError: solver diverged on toya bits=1"
    assert records["toyb"]["status"] == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Failed rows (1)" in report and "solver diverged on toya bits=1" in report
    # a failed row is not finished: the next run retries it, and only it
    retry = stub_runner()
    _run(toy_suite(), tmp_path / "out", retry, base=base_file)
    assert retry.calls == ["toya bits=1"]


def test_bad_recipe_row_fails_alone(tmp_path, toy_suite, stub_runner, base_file):
    rows = [{"method": "toya", "set": ["bits=99"]}, {"method": "nosuchmethod"}, {"method": "toyb"}]
    runner = stub_runner()
    summary = _run(toy_suite(rows=rows), tmp_path / "out", runner, base=base_file)
    assert runner.calls == ["full precision", "toyb"]
    assert summary["failed"] == 2
    errors = {r["label"]: r.get("error", "") for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert "bits must be in 1..8, got 99" in errors["toya bits=99"]
    assert "method 'nosuchmethod' is not registered" in errors["nosuchmethod"]


def test_changed_settings_make_new_rows(tmp_path, toy_suite, stub_runner, base_file):
    _run(toy_suite(), tmp_path / "out", stub_runner(), base=base_file)
    runner = stub_runner()
    _run(toy_suite(), tmp_path / "out", runner, base=base_file, epochs=3)
    # --epochs changes every method row's budget; the full-precision row is unchanged
    assert runner.calls == ["toya bits=1", "toya bits=4", "toyb"]
    base_file.write_bytes(b"another base")
    runner = stub_runner()
    _run(toy_suite(), tmp_path / "out", runner, base=base_file, epochs=3)
    assert len(runner.calls) == 4  # a different base checkpoint invalidates every row


def test_only_runs_the_named_methods_and_the_reference(tmp_path, toy_suite, stub_runner, base_file):
    runner = stub_runner()
    _run(toy_suite(), tmp_path / "out", runner, base=base_file, only=["toyb"])
    assert runner.calls == ["full precision", "toyb"]
    by_label = stub_runner()
    _run(toy_suite(), tmp_path / "labels", by_label, base=base_file, only=["toya bits=4"])
    assert by_label.calls == ["full precision", "toya bits=4"]  # a row label picks one row of a method
    with pytest.raises(UserError, match=r"--only: no row of method, recipe or label \['bwx'\]"):
        _run(toy_suite(), tmp_path / "out", runner, base=base_file, only=["bwx"])


def test_base_is_trained_once_and_cached(tmp_path, toy_suite, stub_runner):
    trained = []

    def trainer(suite, path):
        trained.append(path)
        path.write_bytes(b"weights")

    suite = toy_suite(base={"train": {"epochs": 2}})
    for _ in range(2):
        run_suite(load_suite(suite), tmp_path / "out", row_runner=stub_runner(), base_trainer=trainer,
                  log=lambda m: None)
    assert len(trained) == 1 and trained[0].parent == tmp_path / "out" / "base"
    with pytest.raises(UserError, match="give --base"):
        run_suite(load_suite(toy_suite()), tmp_path / "o2", row_runner=stub_runner(), log=lambda m: None)


def test_a_suite_can_keep_its_trained_base_outside_the_results_folder(tmp_path, toy_suite, stub_runner):
    trained = []

    def trainer(suite, path):
        trained.append(path)
        path.write_bytes(b"weights")

    suite = toy_suite(base={"train": {"epochs": 2}, "cache": str(tmp_path / "bases")})
    run_suite(load_suite(suite), tmp_path / "out", row_runner=stub_runner(), base_trainer=trainer, log=lambda m: None)
    assert trained[0].parent == tmp_path / "bases" and not (tmp_path / "out" / "base").exists()
    # the results name the checkpoint they started from, though it is not in the results folder
    recorded = json.loads((tmp_path / "out" / "base.json").read_text())
    assert recorded["sha256"] == hashlib.sha256(b"weights").hexdigest() and recorded["bytes"] == 7
    assert recorded["checkpoint"] == trained[0].name and recorded["id"].startswith("trained:")
    with pytest.raises(UserError, match="base.cache must be a folder path"):
        load_suite(toy_suite(base={"train": {"epochs": 2}, "cache": 3}))


def test_a_base_training_cut_off_resumes_from_its_last_checkpoint(tmp_path, toy_suite, monkeypatch):
    import deepshrink.engine as engine
    from deepshrink.bench.rows import train_base

    resumed_from = []
    real = engine.Trainer

    def recording(*args, **kwargs):
        resumed_from.append(kwargs.get("resume"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "Trainer", recording)
    suite = load_suite(toy_suite(model={"name": "resnet20"},
                                 base={"train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32}}))
    path = tmp_path / "bases" / "base.pt"
    path.parent.mkdir()
    train_base(suite, path)
    first = torch.load(path, weights_only=True)
    path.unlink()  # cut off after the training run's last checkpoint, before the base was written
    train_base(suite, path)
    assert resumed_from == [None, path.parent / "base-train" / "last.pt"]
    again = torch.load(path, weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_progress_reports_rows_done_and_eta(tmp_path, toy_suite, stub_runner, base_file):
    lines = []
    run_suite(load_suite(toy_suite()), tmp_path / "out", row_runner=stub_runner(), base=base_file,
              log=lines.append)
    done = [line for line in lines if " done in " in line]
    assert [line.split(" done")[0] for line in done] == [f"[bench] row {i}/4" for i in range(1, 5)]
    assert all("ETA" in line for line in done)
    assert "top-1 84.00%" in done[2]


def test_truncated_last_line_is_ignored_on_resume(tmp_path, toy_suite, stub_runner, base_file):
    _run(toy_suite(), tmp_path / "out", stub_runner(), base=base_file)
    results = tmp_path / "out" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the last write was cut short
    runner = stub_runner()
    with pytest.warns(UserWarning, match="not JSON"):
        _run(toy_suite(), tmp_path / "out", runner, base=base_file)
    assert runner.calls == ["toyb"]
    assert json.loads(results.read_text().splitlines()[-1])["label"] == "toyb"


def test_each_invocation_is_logged_with_its_command(tmp_path, toy_suite, stub_runner, base_file):
    for _ in range(2):
        run_suite(load_suite(toy_suite()), tmp_path / "out", row_runner=stub_runner(), base=base_file,
                  log=lambda m: None, command="deepshrink bench --suite toy")
    runs = read_results(tmp_path / "out" / "runs.jsonl")
    assert [(r["ran"], r["skipped"], r["complete"]) for r in runs] == [(4, 0, True), (0, 4, True)]
    assert all(r["command"] == "deepshrink bench --suite toy" and r["seconds"] >= 0 for r in runs)


def test_rows_with_identical_settings_run_once(tmp_path, toy_suite, stub_runner, base_file):
    rows = [{"method": "toya", "set": ["bits=3"]}, {"method": "toya", "set": ["params.bits=3"], "label": "same"}]
    runner = stub_runner()
    _run(toy_suite(rows=rows), tmp_path / "out", runner, base=base_file)
    assert runner.calls == ["full precision", "toya bits=3"]


def test_report_shows_only_the_suites_current_rows(tmp_path, toy_suite, stub_runner, base_file):
    from deepshrink.bench.results import current_results

    _run(toy_suite(), tmp_path / "out", stub_runner(), base=base_file)
    _run(toy_suite(), tmp_path / "out", stub_runner(), base=base_file, epochs=3)  # every method row changes
    assert len(read_results(tmp_path / "out" / "results.jsonl")) == 7
    assert len(current_results(tmp_path / "out")) == 4
    _run(toy_suite(), tmp_path / "out", stub_runner(), base=base_file, epochs=3, only=["toyb"])
    assert len(current_results(tmp_path / "out")) == 4  # --only runs part of the suite; the plan is all of it
    assert (tmp_path / "out" / "report.md").read_text().count("| toya |") == 2


def test_measures_add_figures_without_changing_row_keys(tmp_path, toy_suite, stub_runner, base_file):
    plain = _run(toy_suite(), tmp_path / "plain", stub_runner(), base=base_file)
    measured = toy_suite(measures=["peak_rss"])
    measured["rows"][2]["measures"] = ["layer_seconds"]  # toyb also gets the driver's layer times
    runner = stub_runner()
    summary = _run(measured, tmp_path / "out", runner, base=base_file)
    assert summary["ran"] == plain["ran"] == 4
    records = read_results(tmp_path / "out" / "results.jsonl")
    assert [r["key"] for r in records] == [r["key"] for r in read_results(tmp_path / "plain" / "results.jsonl")]
    assert all(r["peak_rss_mb"] > 0 and r["peak_rss_scope"] == "row" for r in records)
    assert "layer_seconds" not in records[-1]  # the stub writes no layers.json: nothing to read, no figure
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| peak RSS |" in report and "- peak RSS: Peak resident memory" in report
    again = stub_runner()
    assert _run(measured, tmp_path / "out", again, base=base_file)["skipped"] == 4 and again.calls == []


def test_two_benches_on_one_folder_share_the_rows_and_run_each_once(tmp_path, toy_suite, stub_runner, base_file):
    # a second `deepshrink bench` starts on the folder while the first is running a row (flock locks are per
    # open file, so a nested run in this process meets the first one's locks as another process would)
    out, inner = tmp_path / "out", {}

    class StartsAnother(stub_runner):
        def __call__(self, task):
            if task.row.label == "toya bits=1" and not inner:
                second = stub_runner()
                inner["summary"] = _run(toy_suite(), out, second, base=base_file)
                inner["calls"] = second.calls
            return super().__call__(task)

    first = StartsAnother()
    summary = _run(toy_suite(), out, first, base=base_file)
    assert inner["calls"] == ["toya bits=4", "toyb"]  # "toya bits=1" was the first one's: left to it
    assert first.calls == ["full precision", "toya bits=1"]  # the rest were finished by the second
    assert (summary["ran"], summary["elsewhere"], inner["summary"]["ran"], inner["summary"]["elsewhere"]) == (2, 2, 2, 1)
    records = read_results(out / "results.jsonl")
    assert sorted(r["label"] for r in records) == ["full precision", "toya bits=1", "toya bits=4", "toyb"]
    assert _run(toy_suite(), out, stub_runner(), base=base_file)["skipped"] == 4
