"""scripts/readme_studies.py: the study files of removed scripts stay in the history, each naming its script,
the script's last commit and the suite that replaced it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def studies(load_script):
    return load_script("readme_studies")


def test_each_removed_script_is_gone_and_its_commit_had_it(studies):
    for script, (commit, suite) in studies.REMOVED.items():
        assert not (REPO / "benchmarks" / script).exists()
        for name in suite.split(", "):
            assert (REPO / "deepshrink" / "bench" / "suites" / f"{name}.yaml").is_file()
        listed = subprocess.run(["git", "-C", str(REPO), "cat-file", "-t", f"{commit}:benchmarks/{script}"],
                                capture_output=True, text=True)
        if listed.returncode != 0 and "Not a valid object name" in listed.stderr and commit in listed.stderr:
            pytest.skip(f"commit {commit} is not in this clone's history (a shallow clone)")
        assert listed.stdout.strip() == "blob", listed.stderr


def test_the_lsq_init_and_coprune_files_become_tables(tmp_path, studies):
    lsq = {"command": "python benchmarks/lsq_act_init.py", "what": "untrained LSQ", "test_images": 2000,
           "rows": [{"weight_bits": 32, "act_bits": 2, "act_init": "mse", "top1_train_bn": 80.35}]}
    (tmp_path / "lsq_act_init.json").write_text(json.dumps(lsq))
    co = {"command": "co", "domain_pair": "a -> b", "keep_ratio": 0.3, "coprune_minus_target_only": 1.5,
          "results_top1": {"coprune": {"top1_mean": 70.0}, "source_model_no_adaptation": {"top1": 12.0}}}
    (tmp_path / "coprune_cifar10_inverted.json").write_text(json.dumps(co))
    text = "\n".join(studies.study_tables(tmp_path))
    assert "| 32 | 2 | mse | 80.35 |" in text and "(2,000 test images)" in text
    assert "since removed (last in commit f461729; its successor is the suite `lsq-act-init`)" in text
    assert "| coprune | 70.00 |" in text and "| source model no adaptation | 12.00 |" in text
    assert "+1.50 points" in text and "FBS" not in text  # no FBS file, no FBS section


def test_the_lsq_init_suite_is_in_the_readme_not_the_history(tmp_path, load_script):
    readme = load_script("readme_results")
    folder = tmp_path / "results" / "lsq-act-init"
    folder.mkdir(parents=True)
    rows = [{"key": "fp", "method": "fp32", "label": "full precision", "status": "ok", "top1": 86.0, "bytes": 1000,
             "train_bn_top1": 92.3},
            {"key": "q", "method": "lsq", "label": "W2/A2 mse", "status": "ok", "top1": 18.0, "bytes": 100,
             "train_bn_top1": 71.6}]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "runs.jsonl").write_text(json.dumps({"command": "deepshrink bench --suite lsq-act-init", "seconds": 60,
                                                   "ran": 2, "complete": True}) + "\n")
    readme_text = readme.section(tmp_path / "results", tmp_path)
    assert "### LSQ before training" in readme_text and "| 71.60 |" in readme_text
    assert "lsq-act-init" not in readme.history(tmp_path / "results", tmp_path)
