"""scripts/readme_scale.py: the ImageNet-size tables read the suites' results when there are some, else the retired
scripts' files, naming the script and the last commit that had it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("readme_results")


FOLDER = {"command": "python benchmarks/imagefolder_scale.py --root R", "machine": "x86_64, 2 cores", "images": 100000,
          "classes": 1000, "image_size": [120, 160], "index_cold_s": 0.139, "index_reopen_s": 0.039,
          "full_scan_s": 0.385, "rss_added_by_open_mb": 18.2, "decode_alone_img_s": 792.3, "loader_workers": 2,
          "loader_img_s": 1102.4}
RESNET50 = {"machine": "x86_64, 2 cores", "rows": [
    {"method": "lobs", "recipe": {"method": "lobs", "params": {"sparsity": 0.5, "mode": "one_shot"}}, "threads": 2,
     "compress_s": 1321.6, "solve_and_capture_s": 703.8, "peak_rss_gib": 5.59, "packed_bytes": 58486837,
     "slowest_layers": [["layer4.0.conv2", 30.0]],
     "command": "python benchmarks/resnet50_layerwise.py --methods lobs"}],
    "lobs_exact_estimate": {"threads": 1, "estimated_solve_hours": 1.74, "command": "est"}}


def _history(results: Path):
    results.mkdir(parents=True, exist_ok=True)
    (results / "imagefolder_scale.json").write_text(json.dumps(FOLDER))
    (results / "resnet50_layerwise.json").write_text(json.dumps(RESNET50))
    (results / "layerwise_cifar10.jsonl").write_text(json.dumps(
        {"row": "resnet18_224_lobs50", "images": 64, "compress_seconds": 150.3, "peak_rss_gib": 1.44}) + "\n")


def test_retired_scripts_files_are_shown_with_their_last_commit(tmp_path, script):
    _history(tmp_path / "results")
    text = script.section(tmp_path / "results", tmp_path)
    assert "Generated JPEGs, not ImageNet" in text
    assert "Made by `benchmarks/imagefolder_scale.py`, since removed (last in commit aef4d0a)" in text
    assert ("| 100,000 | 1,000 | 160x120 | 0.14 s | 0.04 s | 0.39 s | 18 MiB | 792 img/s | "
            "1102 img/s (2 workers) |") in text
    assert ("| lobs (sparsity=0.5, mode=one_shot) | 2 | 22.0 min | 11.7 min | 5.59 GiB | 58.5 MB | "
            "layer4.0.conv2 30 s | **missed** |") in text
    assert "1.74 h of solves on 1 thread(s)" in text
    assert "`benchmarks/layerwise_cifar10.py --resnet18`, since removed (last in commit 0ce7739)" in text
    assert "2.5 min, 1.44 GiB peak resident memory" in text


def test_the_suites_results_replace_the_retired_tables(tmp_path, script):
    results = tmp_path / "results"
    _history(results)
    folder = results / "resnet50-imagenet-like"
    folder.mkdir()
    record = {"key": "l", "method": "ldnq", "label": "L-DNQ 3 levels", "status": "ok", "bytes": 14_600_000,
              "top1_agreement": 90.0, "threads": 1, "cpus": 1, "peak_rss_mb": 5724.0,
              "data_note": "1024 calibration images from a generated folder"}
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    run = {"command": "deepshrink bench --suite resnet50-imagenet-like"}
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n")
    text = script.section(results, tmp_path)
    assert "Made by `deepshrink bench --suite resnet50-imagenet-like`." in text and "| 1 on 1 CPU |" in text
    # the retired L-OBS row stays until the suite runs L-OBS; the folder table until its folder_io figures exist
    assert "#### ResNet-50, 1,024 calibration images (the rows the suite has not run yet)" in text
    assert "| lobs (sparsity=0.5, mode=one_shot) | 2 | 22.0 min |" in text and "which has not run these rows yet" in text
    assert "imagefolder_scale.py" in text
    more = [{"key": "f", "method": "fp32", "label": "full precision", "status": "ok", "index_cold_s": 0.2},
            {"key": "o", "method": "lobs", "label": "L-OBS 50% one-shot", "status": "ok", "bytes": 5}]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [record, *more]))
    text = script.section(results, tmp_path)
    assert "imagefolder_scale.py" not in text and "resnet50_layerwise.py" not in text
    assert "layerwise_cifar10.py --resnet18" in text  # its own suite has no results yet
    assert "resnet50-imagenet-like" not in script.history(results, tmp_path)  # in the README, not the history


def test_the_recorded_commits_are_the_last_that_had_each_script(load_script):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the scripts' history is not here")
    module = load_script("readme_scale")
    for name, commit in module.RETIRED.items():
        log = subprocess.run(["git", "log", "--format=%h", "--", f"benchmarks/{name}"], cwd=REPO, text=True,
                             capture_output=True).stdout.split()
        if not log:
            pytest.skip("a shallow clone: the scripts' history is not here")
        having = [c for c in log if subprocess.run(["git", "cat-file", "-e", f"{c}:benchmarks/{name}"], cwd=REPO,
                                                   capture_output=True).returncode == 0]
        assert having[0] == commit  # newest first: the deletion commit does not have the file
