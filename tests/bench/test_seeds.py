"""Fresh-seed summaries: mean ± std over seed folders, drops against each seed's own base, targets judged."""
import json

from deepshrink.bench.seeds import markdown, summarise


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
