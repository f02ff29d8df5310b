"""The default row runner on real data (sklearn digits): rows go through deepshrink.pipeline for real."""
from __future__ import annotations

import os

from deepshrink.bench import load_suite, read_results, run_suite

SUITE = {"name": "digits", "model": {"name": "lenet300", "args": {"input_size": 8}}, "data": {"name": "digits"},
         "base": {"train": {"epochs": 3, "lr": 0.05, "batch_size": 64}},
         "rows": [{"method": "magnitude", "set": ["params.sparsity=0.5"], "label": "magnitude 50%"}]}


def test_real_rows_report_figures_measured_from_the_packed_file(tmp_path):
    summary = run_suite(load_suite(SUITE), tmp_path, log=lambda m: None)
    assert summary["failed"] == 0, read_results(tmp_path / "results.jsonl")
    fp, pruned = read_results(tmp_path / "results.jsonl")
    assert fp["method"] == "fp32" and fp["top1"] > 80  # the base trained by the suite learned digits
    assert pruned["top1"] > fp["top1"] - 15
    for record in (fp, pruned):
        files = list((tmp_path / "rows").glob(f"*-{record['key']}/model.dsz"))
        assert len(files) == 1 and os.path.getsize(files[0]) == record["bytes"]
        assert record["ratio"] == round(record["fp32_bytes"] / record["bytes"], 3)
    assert pruned["bytes"] < fp["bytes"] and pruned["epochs"] == 0
    assert len(list((tmp_path / "base").glob("*.pt"))) == 1
