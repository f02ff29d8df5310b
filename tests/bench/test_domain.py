"""A suite's target domain (bench.domain): `transform` and `train_per_class` parsed, in the row key, applied to
every split, checked in one line; a tiny domain suite runs end to end."""
from __future__ import annotations

import pytest
import torch

import deepshrink
from deepshrink.bench import load_suite, plan_rows, read_results, run_suite
from deepshrink.bench.domain import domain_bundle
from deepshrink.data import get_dataset
from deepshrink.errors import UserError

DOMAIN = {"name": "digits", "transform": "invert", "train_per_class": 4}
SUITE = {"name": "digits-inverted", "model": {"name": "lenet300", "args": {"input_size": 8}}, "data": DOMAIN,
         "base": {"checkpoint": "base.pt"}, "seed": 0,
         "budget": {"epochs": 1, "lr": 0.01, "batch_size": 8},
         "rows": [{"method": "coprune", "recipe": {"method": "coprune", "params": {"keep_ratio": 0.5, "stages": 1}},
                   "label": "coprune keep 0.5"}]}


def test_the_coprune_suite_describes_its_target_domain_as_data():
    suite = load_suite("coprune-cifar10-inverted")
    assert (suite.data_spec.transform, suite.data_spec.train_per_class) == ("invert", 100)
    assert suite.identity()["data"] == {"name": "cifar10", "transform": "invert", "train_per_class": 100}
    rows = plan_rows(suite, "base-id")
    assert all(r.error is None for r in rows)
    params = {r.label: r.recipe["params"] for r in rows[1:]}
    assert params["dense fine-tune on target"]["keep_ratio"] == 1.0
    assert (params["target-only keep 0.3 seed 0"]["alpha_start"], params["target-only keep 0.3 seed 0"]["alpha_end"],
            params["source-only keep 0.3 seed 0"]["alpha_start"], params["source-only keep 0.3 seed 0"]["alpha_end"]) \
        == (0.0, 0.0, 1.0, 1.0)
    assert {r.recipe["train"]["seed"] for r in rows[1:] if r.label.endswith("seed 1")} == {1}
    assert all(r.recipe["train"]["batch_size"] == 64 and r.recipe["train"]["epochs"] == 15 for r in rows[1:])


def test_domain_settings_are_in_the_row_key_and_a_plain_data_set_keeps_its_key():
    keys = {r.label: r.key for r in plan_rows(load_suite(SUITE), "b")}
    for change in ({"transform": None}, {"train_per_class": 5}):
        other = load_suite({**SUITE, "data": {**DOMAIN, **change}})
        assert all(keys[r.label] != r.key for r in plan_rows(other, "b"))
    assert load_suite({**SUITE, "data": {"name": "digits"}}).identity()["data"] == {"name": "digits"}


def test_the_target_domain_is_every_split_transformed_with_few_labelled_training_images():
    spec = load_suite(SUITE).data_spec
    bundle = domain_bundle(spec, {"train": {"batch_size": 8, "seed": 3}})
    assert len(bundle.dataset) == 40 and torch.bincount(bundle.dataset.targets).tolist() == [4] * 10
    assert bundle.train.batch_size == 8
    plain_test = get_dataset("digits", "test")
    assert torch.equal(bundle.test.dataset.images, 255 - plain_test.images)
    assert torch.equal(bundle.test.dataset.targets, plain_test.targets)
    assert len(bundle.val.dataset) > len(bundle.dataset)  # the held-out validation part is whole
    again = domain_bundle(spec, {"train": {"batch_size": 8, "seed": 5}})
    assert torch.equal(again.dataset.images, bundle.dataset.images)  # one labelled draw for every seed


@pytest.mark.parametrize("change, message", [
    ({"data": {**DOMAIN, "transform": "blur"}}, "data.transform must be one of ['invert']"),
    ({"data": {**DOMAIN, "train_per_class": 0}}, "data.train_per_class must be a positive integer"),
    ({"data": {**DOMAIN, "train_per_class": True}}, "data.train_per_class must be a positive integer"),
    ({"data": {**DOMAIN, "calib": {"split": "train", "per_class": 3}, "eval": {"split": "test", "per_class": 3}}},
     "do not combine with ['calib', 'eval']"),
    ({"base": {"train": {"epochs": 1}}}, "the base is the source model: give base.checkpoint"),
])
def test_bad_domain_settings_are_one_line(change, message):
    with pytest.raises(UserError) as info:
        load_suite({**SUITE, **change})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_domain_suite_runs_end_to_end_on_the_target_images(tmp_path):
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    torch.save(deepshrink.create_model("lenet300", input_size=8).state_dict(), base)
    out = tmp_path / "out"
    summary = run_suite(load_suite({**SUITE, "base": {"checkpoint": str(base)}}), out, log=lambda m: None)
    assert (summary["ran"], summary["failed"]) == (2, 0)
    fp, coprune = read_results(out / "results.jsonl")
    assert fp["data_note"].startswith("target domain digits, transform invert: 4 labelled training images per class "
                                      "(40)")
    test = domain_bundle(load_suite(SUITE).data_spec).test
    from deepshrink.engine import evaluate

    model = deepshrink.create_model("lenet300", input_size=8)
    model.load_state_dict(torch.load(base, weights_only=True))
    assert fp["top1"] == pytest.approx(evaluate(model, test)["top1"])  # scored on the inverted test images
    assert coprune["epochs"] == 1 and coprune["ratio"] > 1
