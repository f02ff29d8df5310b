"""Fresh-seed summaries: mean ± std over seed folders, drops against each seed's own base, targets judged."""
import json
from pathlib import Path

from deepshrink.bench.seeds import PAPER, markdown, recipe_choices, summarise


def _folder(path, seed, fp, rows):
    path.mkdir()
    records = [{"key": f"fp{seed}", "method": "fp32", "label": "full precision", "status": "ok", "top1": fp}]
    records += [{"key": f"{label}{seed}", "method": "ldnq", "label": label, "status": "ok", "top1": top1,
                 "val_top1": top1 + 1, "seed": seed, "target_drop": 1.0} for label, top1 in rows]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_mean_std_and_targets_over_two_seeds(tmp_path):
    folders = [_folder(tmp_path / "s2", 2, 86.0, [("L-DNQ 5", 85.5), ("L-DNQ 3", 84.0)]),
               _folder(tmp_path / "s3", 3, 86.0, [("L-DNQ 5", 85.1), ("L-DNQ 3", 84.4)])]
    rows = {row["label"]: row for row in summarise(folders)}
    assert rows["L-DNQ 5"]["seeds"] == [2, 3] and rows["L-DNQ 5"]["drop"] == [0.5, 0.9000000000000057]
    lines = markdown(list(rows.values()), n_test=10_000)
    five = next(line for line in lines if line.startswith("| L-DNQ 5 "))
    three = next(line for line in lines if line.startswith("| L-DNQ 3 "))
    # mean 85.30, sample std 0.28; binomial SE sqrt(.853 * .147 / 10000) = 0.35 points
    assert "| 85.30 ± 0.28 | 0.35 | 86.30 | 0.70 ± 0.28 | 1 | met |" in five
    assert three.endswith("| 1.80 ± 0.28 | 1 | **missed** |")


def test_a_default_and_its_paper_recipe_are_compared_on_validation_over_the_seeds_both_ran(tmp_path):
    def folder(name, seed, rows):
        path = tmp_path / name
        path.mkdir()
        records = [{"key": f"fp{seed}", "method": "fp32", "label": "full precision", "status": "ok", "top1": 86.0}]
        records += [{"key": f"{label}{seed}", "method": "bwn", "label": label, "status": "ok", "top1": test,
                     "val_top1": val, "seed": seed} for label, test, val in rows]
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    # the paper recipe has the better test top-1 but the worse validation top-1: validation decides;
    # seed 3's default row has no paper row beside it, so it takes no part
    folders = [folder("s2", 2, [("BWN", 85.0, 88.0), ("BWN (paper recipe)", 85.5, 87.0), ("TTQ", 85.0, 90.0)]),
               folder("s3", 3, [("BWN", 85.2, 80.0), ("TTQ (paper recipe)", 85.0, 90.5)])]
    choices = {c["label"]: c for c in recipe_choices(summarise(folders))}
    assert choices["BWN"]["seeds"] == [2] and choices["BWN"]["default_wins"] is True
    assert (choices["BWN"]["default_val"], choices["BWN"]["paper_val"]) == (88.0, 87.0)
    assert choices["TTQ"]["seeds"] == [] and choices["TTQ"]["default_wins"] is None  # no seed in common


def test_every_shipped_default_is_its_methods_best_by_validation_in_the_committed_fresh_seed_rows():
    # a default row and its "(paper recipe)" twin: the twin runs NAME-paper, the default NAME (what
    # `--method`/the name runs), and NAME is the one with the higher validation top-1 where both ran
    from deepshrink.bench import load_suite
    from deepshrink.bench.plan import plan_rows

    folders = sorted(p for p in (Path(__file__).parents[2] / "benchmarks" / "results").glob("cifar10-seed*"))
    recipes = {row.label: row.recipe_source for row in plan_rows(load_suite("cifar10"), "base-id")}
    for choice in recipe_choices(summarise(folders)):
        if choice["default_wins"] is None:
            continue
        assert choice["default_wins"], f"{choice['label']}: the paper recipe has the higher val top-1 {choice}"
        assert recipes[choice["label"] + PAPER] == recipes[choice["label"]] + "-paper", choice["label"]


def test_one_row_at_one_seed_in_two_folders_is_an_error_not_two_seeds(tmp_path):
    import pytest

    from deepshrink.errors import UserError

    folders = [_folder(tmp_path / "s2", 2, 86.0, [("L-DNQ 5", 85.5)]),
               _folder(tmp_path / "s2-again", 2, 86.0, [("L-DNQ 5", 85.1)])]
    with pytest.raises(UserError, match="'L-DNQ 5' at seed 2 is in both"):
        summarise(folders)
