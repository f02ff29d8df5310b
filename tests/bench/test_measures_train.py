"""The training-step and re-packing measures: their figures against independent computations on a tiny suite,
the trainable model they time, their report columns, and bad settings as one line."""
from __future__ import annotations

import pytest
import torch
import yaml

import deepshrink
from deepshrink.bench import load_suite, plan_rows, read_results, run_suite
from deepshrink.bench.measures import MEASURES, check_measures
from deepshrink.bench.report import render_markdown
from deepshrink.cli import main
from deepshrink.errors import UserError
from deepshrink.quant.layers import _QuantLayer

STEP = {"train_step_seconds": {"batch_size": 16, "rounds": 2, "warmup": 1, "threads": 1}}
SUITE = {"name": "digits-train", "model": {"name": "lenet300", "args": {"input_size": 8}},
         "data": {"name": "digits"}, "base": {"train": {"epochs": 1, "lr": 0.05, "batch_size": 64}}, "seed": 0,
         "budget": {"epochs": 1, "max_steps_per_epoch": 2},
         "measures": ["pack_variants", STEP],
         "rows": [{"method": "bwn", "label": "BWN"},
                  {"method": "twn", "label": "TWN"},
                  {"method": "ldnq_rtn", "set": ["params.levels=3"], "label": "round-to-nearest 3 levels"}]}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    summary = run_suite(load_suite(SUITE), out, log=lambda m: None)
    return out, summary, {r["label"]: r for r in read_results(out / "results.jsonl")}


def test_training_form_is_the_methods_quantized_model_untrained_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet300", input_size=8).eval()
    batch = (torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.int64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = deepshrink.training_form(model, "bwn", batch)
    swapped = [n for n, m in trainable.named_modules() if isinstance(m, _QuantLayer)]
    assert swapped == ["fc2"] and trainable.training  # lenet300: fc1 and fc3 stay float (keep_first_last)
    assert torch.equal(trainable.fc2.weight, model.fc2.weight)  # untrained: the base's values
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, _QuantLayer) for m in model.modules())
    assert deepshrink.training_form(model, "ldnq_rtn", batch) is None  # layer-wise: no training form
    assert deepshrink.training_form(model, "fp32", batch) is None


def test_train_step_seconds_times_each_training_row_against_the_float_step(suite_run):
    out, summary, rows = suite_run
    assert (summary["ran"], summary["failed"]) == (4, 0)
    for label in ("BWN", "TWN"):
        row = rows[label]
        assert row["train_step_seconds"] > 0 and row["float_train_step_seconds"] > 0
        ratio = row["train_step_seconds"] / row["float_train_step_seconds"]
        assert row["train_step_vs_float"] == pytest.approx(ratio, abs=1e-3, rel=1e-3)
        assert (row["train_step_batch"], row["train_step_rounds"], row["train_step_threads"]) == (16, 2, 1)
    for label in ("full precision", "round-to-nearest 3 levels"):  # nothing of their own is trained
        assert "train_step_seconds" not in rows[label]


def test_pack_variants_sizes_are_the_repacked_files_and_fp16_top1_is_that_files(suite_run):
    out, _, rows = suite_run
    test = deepshrink.pipeline.build_data("digits").test  # the suite's evaluation images: the test split
    for label, row in rows.items():
        folder = next(p for p in (out / "rows").iterdir() if p.name.endswith(row["key"]))
        assert row["entropy_file_bytes"] == (folder / "model-entropy.dsz").stat().st_size
        assert row["fp16_file_bytes"] == (folder / "model-fp16.dsz").stat().st_size
        assert row["fp16_file_bytes"] < row["entropy_file_bytes"]  # float tensors at half the bytes
        report = deepshrink.packing.inspect(folder / "model-entropy.dsz")
        assert row["shannon_code_bytes"] == round(report["totals"]["shannon_code_bytes"])
        assert report["options"]["entropy"] and report["options"]["ternary_base3"]
        assert row["fp16_top1"] == deepshrink.evaluate(deepshrink.load(folder / "model-fp16.dsz"), test)["top1"]
    assert rows["full precision"]["shannon_code_bytes"] == 0  # no code streams in a float file
    assert rows["TWN"]["shannon_code_bytes"] > 0


def test_the_report_has_a_column_per_figure(suite_run):
    out, _, rows = suite_run
    report = render_markdown(list(rows.values()))
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    for heading in ("train step", "float step", "x float step", "entropy-coded file", "codes' Shannon bound",
                    "+ fp16 floats", "top-1 fp16 file"):
        assert f"| {heading} |" in header
    bwn = next(line for line in report.splitlines() if line.startswith("| bwn"))
    assert f"{1e3 * rows['BWN']['train_step_seconds']:.1f} ms" in bwn and f"{rows['BWN']['fp16_file_bytes']:,} B" in bwn


def test_a_rows_settings_override_the_suites_and_unset_ones_take_the_defaults():
    suite = load_suite({**SUITE, "rows": [{"method": "bwn", "measures": [{"train_step_seconds": {"rounds": 5}}]}]})
    assert suite.row_measures(suite.rows[0])["train_step_seconds"] == {**STEP["train_step_seconds"], "rounds": 5}
    assert check_measures([{"train_step_seconds": {}}], "suite") == {"train_step_seconds": {}}
    assert MEASURES["train_step_seconds"].settings == {"batch_size": 128, "rounds": 20, "warmup": 3, "threads": 0}


@pytest.mark.parametrize("entry, message", [
    ({"train_step_seconds": {"batch_size": 0}}, "batch_size must be a positive integer, got 0"),
    ({"train_step_seconds": {"rounds": "many"}}, "rounds must be"),
    ({"train_step_seconds": {"threads": 0}}, "threads must be a positive integer, got 0"),
    ({"train_step_seconds": {"batch": 64}}, "unknown setting(s) ['batch']"),
    ({"pack_variants": {"fp16": True}}, "measure 'pack_variants' takes no settings"),
    ({"train_step_seconds": {"rounds": 2}, "pack_variants": {}}, "must be a list of names"),
])
def test_bad_measure_settings_are_one_line_and_exit_2(entry, message, tmp_path, capsys):
    with pytest.raises(UserError) as info:
        load_suite({**SUITE, "measures": [entry]})
    assert message in str(info.value) and "\n" not in str(info.value)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "measures": [entry]}))
    assert main(["bench", "--suite", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_batch_larger_than_the_evaluation_images_fails_the_row_naming_the_fix(tmp_path):
    suite = {**SUITE, "measures": [{"train_step_seconds": {"batch_size": 100_000}}], "rows": SUITE["rows"][:1]}
    run_suite(load_suite(suite), tmp_path / "out", log=lambda m: None)
    bwn = read_results(tmp_path / "out" / "results.jsonl")[-1]
    assert bwn["status"] == "failed" and "batch_size 100000 is more than the suite's" in bwn["error"]


def test_the_pack_sizes_suite_keeps_the_scripts_rows_and_trains_its_qat_rows_20_steps():
    suite = load_suite("resnet20-pack-sizes")
    rows = plan_rows(suite, "base-id")
    assert [r.recipe_source for r in rows[1:]] == ["bwn-paper", "ttq-paper", "dorefa-w2a2-paper", "ldnq-l3", "lobs70-ldnq-l5",
                                                   "pq-resnet20"]
    assert all(r.error is None and "pack_variants" in r.measures for r in rows)
    for row in rows[1:4]:  # the QAT rows: a size does not depend on how long they trained
        train = row.recipe["train"]
        assert (train["epochs"], train["max_steps_per_epoch"], train["lr"]) == (1, 20, 0.001)


def test_every_row_of_the_step_time_suite_has_a_training_form_to_time():
    rows = plan_rows(load_suite("resnet20-qat-step-time"), "base-id")
    model = deepshrink.create_model("resnet20", shortcut="B")
    batch = (torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.int64))
    assert len(rows) == 12 and all(r.error is None for r in rows)
    for row in rows[1:]:
        assert row.measures == {"train_step_seconds": {"batch_size": 128, "rounds": 20, "warmup": 3, "threads": 1}}
        assert row.recipe["train"]["max_steps_per_epoch"] == 1
        assert deepshrink.training_form(model, row.recipe, batch) is not None, row.label
