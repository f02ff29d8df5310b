"""`deepshrink bench` end to end on real data (sklearn digits): rows go through deepshrink.pipeline."""
from __future__ import annotations

import os

import yaml

from deepshrink.bench import read_results
from deepshrink.cli import main

SUITE = {"name": "digits", "model": {"name": "lenet300", "args": {"input_size": 8}}, "data": {"name": "digits"},
         "base": {"train": {"epochs": 3, "lr": 0.05, "batch_size": 64}},
         "rows": [{"method": "magnitude", "set": ["params.sparsity=0.5"], "label": "magnitude 50%"}]}


def test_bench_command_measures_rows_from_the_packed_file(tmp_path, capsys):
    suite = tmp_path / "digits.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "magnitude 50%" in printed.out and f"plot:   {out / 'pareto.png'}" in printed.out
    assert "[bench] row 2/2 done" in printed.err
    fp, pruned = read_results(out / "results.jsonl")
    assert fp["method"] == "fp32" and fp["top1"] > 80  # the base trained by the suite learned digits
    assert fp["classes"] == 10  # the plot reads chance level (10%) from it
    assert pruned["status"] == "ok" and pruned["top1"] > fp["top1"] - 15
    for record in (fp, pruned):
        files = list((out / "rows").glob(f"*-{record['key']}/model.dsz"))
        assert len(files) == 1 and os.path.getsize(files[0]) == record["bytes"]
        assert record["ratio"] == round(record["fp32_bytes"] / record["bytes"], 3)
        assert record["command"] == f"deepshrink bench --suite {suite} --out {out}"
    assert pruned["bytes"] < fp["bytes"] and pruned["epochs"] == 0
    assert len(list((out / "base").glob("*.pt"))) == 1
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in listing] == ["  1. [ok     ", "  2. [ok     "]


def test_list_shows_the_rows_of_a_suite_whose_base_is_not_trained_yet(tmp_path, capsys):
    from deepshrink.bench import load_suite, plan_rows
    from deepshrink.bench.runner import trained_base_id

    out = tmp_path / "out"
    assert main(["bench", "--suite", "quick", "--out", str(out), "--list"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"base: not trained yet ({out}/base/lenet5-fashion-mnist-")
    suite = load_suite("quick")
    assert all(f"key {row.key}" in printed for row in plan_rows(suite, trained_base_id(suite)))
    assert not out.exists()  # listing trains nothing and creates nothing


def test_the_full_precision_row_is_the_fp32_method_planned_once():
    """The reference row runs registered method `fp32` through run_compress; `all_methods` adds no second one."""
    from deepshrink import list_methods
    from deepshrink.bench import load_suite
    from deepshrink.bench.plan import plan_rows

    suite = load_suite({**SUITE, "rows": [], "all_methods": True})
    methods = [row.method for row in plan_rows(suite, "sha256:x")]
    assert methods[0] == "fp32" and methods.count("fp32") == 1 and "fp32" in list_methods()
    assert sorted(methods) == list_methods()  # every registered method, once


def test_a_training_row_cut_off_continues_from_its_last_checkpoint_and_ends_as_one_sitting(tmp_path, capsys,
                                                                                         monkeypatch):
    import deepshrink.engine
    from deepshrink.engine import Hook, Trainer

    class Stop(Hook):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 2:
                raise KeyboardInterrupt  # as a session's end would, after two of the three epochs

    class StoppedTrainer(Trainer):
        def __init__(self, *args, hooks=(), **kwargs):
            super().__init__(*args, hooks=[*hooks, Stop()], **kwargs)

    suite = tmp_path / "digits.yaml"
    suite.write_text(yaml.safe_dump({**SUITE, "rows": [
        {"method": "bwn", "set": ["train.epochs=3", "train.deterministic=true"], "label": "BWN"}]}))
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(["bench", "--suite", str(suite), "--out", str(straight)]) == 0
    base = next((straight / "base").glob("*.pt"))
    with monkeypatch.context() as patch:
        patch.setattr(deepshrink.engine, "Trainer", StoppedTrainer)
        assert main(["bench", "--suite", str(suite), "--out", str(cut), "--base", str(base)]) != 0
    assert [r["method"] for r in read_results(cut / "results.jsonl")] == ["fp32"]  # the cut row is not recorded
    capsys.readouterr()
    assert main(["bench", "--suite", str(suite), "--out", str(cut), "--base", str(base)]) == 0
    assert "resumed from" in "".join(capsys.readouterr())
    (_, one), (_, two) = read_results(straight / "results.jsonl"), read_results(cut / "results.jsonl")
    assert two["status"] == "ok" and two["resumed"] is True and "resumed" not in one
    assert (two["top1"], two["val_top1"], two["bytes"], two["epochs"]) == \
        (one["top1"], one["val_top1"], one["bytes"], one["epochs"])
    epochs = next((cut / "rows").glob("bwn-*/train/metrics.jsonl")).read_text().count('"epoch"')
    assert epochs == next((straight / "rows").glob("bwn-*/train/metrics.jsonl")).read_text().count('"epoch"')
