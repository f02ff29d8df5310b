"""Suite files: the shipped suites are valid and complete; mistakes are refused with a clear message."""
from __future__ import annotations

import pytest

from deepshrink.bench import load_suite, plan_rows, suite_names
from deepshrink.errors import UserError
from deepshrink.registry import list_methods

GOOD = {"model": {"name": "lenet5"}, "data": {"name": "fashion-mnist"}, "rows": [{"method": "bwn"}]}


def test_shipped_suites_load():
    assert {"quick", "cifar10"} <= set(suite_names())
    quick = load_suite("quick")
    assert quick.model["name"] == "lenet5" and quick.data["name"] == "fashion-mnist"
    assert quick.base["train"]["epochs"] >= 1  # the quick suite trains its own base
    assert load_suite("cifar10").model == {"name": "resnet20", "args": {"shortcut": "B"}}


def test_quick_suite_has_a_valid_row_for_every_registered_method():
    rows = plan_rows(load_suite("quick"), "base-id")
    assert rows[0].method == "fp32"
    assert set(list_methods()) <= {r.method for r in rows}
    broken = {r.label: r.error for r in rows if r.error}
    assert broken == {}, broken
    assert len({r.key for r in rows}) == len(rows)  # every row has its own identity


def test_cifar10_rows_resolve_with_the_papers_budget():
    rows = plan_rows(load_suite("cifar10"), "base-id")
    registered = set(list_methods())
    for row in rows[1:]:
        if row.method in registered:
            assert row.error is None, (row.label, row.error)
            assert row.recipe["keep_first_last"] is True
    bwn = next(r for r in rows if r.method == "bwn")
    assert bwn.recipe["train"]["epochs"] == 8


@pytest.mark.parametrize("depth", [32, 56])
def test_ldnq_table_suites_train_their_base_with_the_shared_recipe_outside_the_repository(depth):
    suite = load_suite(f"cifar10-resnet{depth}")
    assert suite.model == {"name": f"resnet{depth}", "args": {"shortcut": "B"}}
    assert suite.base["cache"].startswith("~/") and suite.base["train"]["epochs"] == 30
    rows = plan_rows(suite, "base-id")
    assert [(r.method, r.recipe["params"]["levels"], r.spec.target_drop) for r in rows[1:]] == [
        ("ldnq", 3, 2.0), ("ldnq", 5, 0.6), ("ldnq", 7, 0.2),
        ("ldnq_rtn", 3, None), ("ldnq_rtn", 5, None), ("ldnq_rtn", 7, None)]


def test_only_picks_rows_by_method_or_by_shipped_recipe_name():
    suite = load_suite("cifar10")
    by_recipe = plan_rows(suite, "base-id", only=["dorefa-w8a8", "dorefa-w1a1-kd"])
    assert [r.label for r in by_recipe] == ["full precision", "DoReFa W1/A1", "DoReFa W8/A8"]
    assert [(r.recipe["params"]["weight_bits"], r.recipe["params"]["act_bits"]) for r in by_recipe[1:]] == \
        [(1, 1), (8, 8)]
    assert len(plan_rows(suite, "base-id", only=["dorefa"])) == 9  # the reference and eight DoReFa rows
    with pytest.raises(UserError, match="no row of method, recipe or label"):
        plan_rows(suite, "base-id", only=["dorefa-w3a3"])
    # --only's text: split on commas, unless it is one row's whole label (commas in it too)
    assert [r.label for r in plan_rows(suite, "base-id", only="PQ 12x, 1% data")] == ["full precision",
                                                                                     "PQ 12x, 1% data"]
    assert [r.label for r in plan_rows(suite, "base-id", only="dorefa-w8a8,twn")] == ["full precision",
                                                                                   "TWN ternary", "DoReFa W8/A8"]


def test_vit_suite_pairs_each_layerwise_method_with_its_baseline_and_keeps_the_ends_float():
    suite = load_suite("vit-cifar10")
    assert suite.model["name"] == "vit_tiny_cifar" and suite.base["train"]["epochs"] >= 1  # trains its own base
    rows = plan_rows(suite, "base-id")
    assert [r.error for r in rows if r.error] == []
    assert all(row.recipe["keep_first_last"] is True for row in rows[1:])  # patch embedding and head float
    methods = [r.method for r in rows]
    for method, baseline in [("ldnq", "ldnq_rtn"), ("lobs", "magnitude"), ("pq", "kmeans")]:
        assert methods.count(method) == methods.count(baseline) >= 1
    for row in rows:
        if row.method in ("bwn", "lsq"):  # a short, capped fine-tune: the suite runs on a CPU budget
            assert row.recipe["train"]["epochs"] == 1 and row.recipe["train"]["max_steps_per_epoch"] <= 200


def test_row_keys_are_stable_and_sensitive():
    suite = load_suite("quick")
    first = [r.key for r in plan_rows(suite, "base-a")]
    assert first == [r.key for r in plan_rows(load_suite("quick"), "base-a")]
    assert not set(first) & {r.key for r in plan_rows(suite, "base-b")}


@pytest.mark.parametrize("change, message", [
    ({"model": None}, "`model:` must be a mapping with a `name:`"),
    ({"data": {"root": "/x"}}, "`data:` must be a mapping with a `name:`"),
    ({"rows": []}, "`rows:` must be a non-empty list"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"rows": [{"method": "bwn", "epochs": 3}]}, "rows[0]: unknown key(s) ['epochs']"),
    ({"rows": [{"recipe": "bwn"}]}, "rows[0] must be a mapping with a `method:`"),
    ({"rows": [{"method": "bwn", "set": "weight_bits=2"}]}, "`set:` must be a list of key=value strings"),
    ({"rows": [{"method": "bwn", "budget": {"epoch": 1}}]}, "rows[0]: budget: unknown key(s) ['epoch']"),
    ({"budget": {"epochs": 1, "speed": 2}}, "budget: unknown key(s) ['speed']"),
    ({"base": {"path": "x.pt"}}, "`base:` takes `checkpoint:`"),
    ({"seed": "zero"}, "seed must be an integer"),
    ({"rows": [{"method": "bwn", "published": 1.2}]}, "`published:` must be a mapping {drop: POINTS"),
])
def test_bad_suites_are_refused_with_the_field_named(change, message):
    with pytest.raises(UserError) as info:
        load_suite({**GOOD, **change})
    assert message in str(info.value)


def test_unknown_suite_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="shipped: cifar10, .*quick"):
        load_suite("quik")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_suite(bad)
    bad.write_text("- just a list")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_suite(bad)
