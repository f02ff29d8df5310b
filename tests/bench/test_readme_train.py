"""scripts/readme_train.py: the tables of the retired training and packing scripts name the script and its last
commit, and the README generator reads the suites that replaced them."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def train(load_script):
    return load_script("readme_train")


def test_each_retired_script_is_named_with_its_last_commit_and_is_gone(train):
    repo = SCRIPTS.parent
    for script, (commit, suite) in train.RETIRED.items():
        assert not (repo / "benchmarks" / script).exists()
        assert (repo / "deepshrink" / "bench" / "suites" / f"{suite}.yaml").is_file()
        text = train.made_by(script)
        assert f"`benchmarks/{script}`" in text and f"last at commit {commit}" in text
        def has(obj: str) -> bool:
            return subprocess.run(["git", "-C", str(repo), "cat-file", "-e", obj], capture_output=True).returncode == 0

        if not has(f"{commit}^{{commit}}"):
            pytest.skip(f"commit {commit} is not here (no git history, or a shallow clone)")
        assert has(f"{commit}:benchmarks/{script}"), f"commit {commit} has no benchmarks/{script}"


def test_pack_sizes_history_is_a_table_of_the_old_file(tmp_path, train):
    row = {"row": "ttq", "encodings": ["float32", "ternary 2b"], "file_bytes": 87881, "ratio_vs_fp32_params": 12.4,
           "top1_from_file": 17.85, "test_images": 2000, "entropy_file_bytes": 69651, "shannon_code_bytes": 51457,
           "fp16_entropy_file_bytes": 61269}
    (tmp_path / "pack_sizes.jsonl").write_text(json.dumps(row) + "\n")
    text = "\n".join(train.pack_sizes_history(tmp_path))
    assert "| ttq | float32, ternary 2b | 87,881 B | 12.40 | 17.85 | 69,651 B | 51,457 B | 61,269 B |" in text
    assert "retired `benchmarks/pack_sizes.py` (last at commit 35b2949" in text and "2,000 test images" in text
    assert train.pack_sizes_history(tmp_path / "none") == []


def test_history_and_readme_read_the_retired_files_and_the_new_suites(tmp_path, load_script):
    script = load_script("readme_results")
    results = tmp_path / "results"
    results.mkdir()
    (results / "qat_cifar10.jsonl").write_text(json.dumps({"row": "bwn", "epochs": 8.0, "top1": 85.5}) + "\n")
    (results / "pack_sizes.jsonl").write_text("")
    history = script.history(results, tmp_path)
    assert "retired `benchmarks/qat_cifar10.py` (last at commit a79a9ea; its rows are now `deepshrink bench " \
           "--suite cifar10`'s)" in history
    folder = results / "resnet20-pack-sizes"
    folder.mkdir()
    record = {"key": "k", "method": "ttq", "label": "TTQ ternary (20 steps)", "status": "ok", "top1": 17.0,
              "bytes": 87881, "entropy_file_bytes": 69651, "shannon_code_bytes": 51457, "fp16_file_bytes": 61269,
              "fp16_top1": 17.1}
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    readme = script.section(results, tmp_path)
    assert "### Packed sizes of the shared ResNet-20 per method" in readme and "| 69,651 B |" in readme
    assert "resnet20-pack-sizes" not in script.history(results, tmp_path)
