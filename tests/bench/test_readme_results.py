"""scripts/readme_results.py: the README's results block is generated from the results files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("readme_results")


def _results(folder: Path):
    folder.mkdir(parents=True)
    rows = [{"key": "fp", "method": "fp32", "label": "full precision", "status": "ok", "top1": 90.0, "bytes": 250_000},
            {"key": "b", "method": "bwn", "label": "BWN W1", "status": "ok", "top1": 88.0, "bytes": 12_000},
            {"key": "x", "method": "pq", "label": "PQ", "status": "failed", "error": "ValueError: no"}]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = {"command": "deepshrink bench --suite quick --out benchmarks/results/quick", "seconds": 600,
           "ran": 3, "complete": True}
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n")


def test_section_has_table_command_and_time(tmp_path, script):
    _results(tmp_path / "results" / "quick")
    text = script.section(tmp_path / "results", tmp_path)
    assert "### Quick suite" in text
    assert "Made by `deepshrink bench --suite quick --out benchmarks/results/quick`." in text
    assert "2 rows, 1 failed; 10.0 min of benchmark wall time in one uninterrupted run." in text
    assert "| bwn | BWN W1 ★ | 88.00 | — | -2.00 | -1.20 [1] | 12.0 KB |" in text
    assert "#### Failed rows (1)" in text


def test_write_replaces_only_the_marked_block(tmp_path, script):
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n{script.START}\nold table\n{script.END}\n## after\n")
    script.write_block(readme, "new table\n")
    assert readme.read_text() == f"# intro\n{script.START}\nnew table\n{script.END}\n## after\n"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no `<!-- results:start -->`"):
        script.write_block(readme, "x\n")


def test_issue_tables_show_each_row_against_its_target(tmp_path, script):
    results = tmp_path / "results"
    results.mkdir()
    qat = [{"row": "fp", "epochs": 0, "top1": 86.58},
           {"row": "bwn", "bits": "1/32", "epochs": 1.0, "budget": "REDUCED (not 8 epochs)", "top1": 78.18,
            "drop": 8.4, "target_drop": 1.5, "met": False},
           {"row": "bwn", "bits": "1/32", "epochs": 8.0, "budget": "full", "top1": 85.5, "drop": 1.08,
            "target_drop": 1.5, "met": True, "note": "first try"},
           {"row": "bwn", "bits": "1/32", "epochs": 8.0, "seed": 1, "tag": "kd", "budget": "full", "top1": 85.1,
            "drop": 1.48, "target_drop": 1.5, "met": True, "note": "second seed"}]
    (results / "qat_cifar10.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qat))
    layerwise = [{"row": "pq12x", "recipe": {"method": "pq", "params": {},
                                             "layers": [{"pattern": "layer1.*", "params": {"n_centroids": 32}}]},
                  "top1": 82.2, "drop": 4.38, "target_drop": 2.0, "met": False, "conv_ratio": 14.04,
                  "compress_seconds": 33.9},
                 {"row": "resnet18_224_lobs50", "compress_seconds": 150.3}]  # no accuracy: not a table row
    (results / "layerwise_cifar10.jsonl").write_text("".join(json.dumps(r) + "\n" for r in layerwise))
    text = script.history(results, tmp_path)  # the probe history lives in benchmarks/HISTORY.md
    assert "Full precision: 86.58% top-1." in text
    assert "| bwn | 1/32 | 1 | reduced | 78.18 | 8.40 | 1.5 | **missed** |" in text
    assert "| bwn | 1/32 | 8 | full | 85.50 | 1.08 | 1.5 | met | first try |" in text
    assert "| bwn (kd, seed 1) | 1/32 | 8 | full | 85.10 | 1.48 | 1.5 | met | second seed |" in text
    assert "| pq12x | pq | layer1.*: n_centroids=32 | 82.20 | 4.38 | 2 | **missed** | 14.04 | 33.9 |" in text
    assert "resnet18_224" not in text


def test_step_time_and_issue6_tables(tmp_path, script):
    results = tmp_path / "results"
    results.mkdir()
    step = {"command": "qat --step-time", "step": "one step", "batch_size": 128, "threads": 1, "rounds": 7,
            "median_ms": {"fp": 500.0, "xnor": 800.0}, "ratio_vs_fp": {"xnor": 1.6}, "target": "<= 1.5x",
            "met": {"xnor": False}}
    (results / "qat_step_time.json").write_text(json.dumps(step))
    fbs = {"fine_tune": {"epochs": 14, "lr": 0.01, "distill": 1.0}, "fbs_top1": 84.0, "top1_drop": 2.58,
           "macs_per_image": {"ratio": 2.638}, "latency_speedup": {"vs_dense": 1.9},
           "targets": {"top1_drop<=2.0": False, "macs_ratio>=2": True}}
    (results / "fbs_cifar10_e14.json").write_text(json.dumps(fbs))
    meta = {"command": "mq", "float_top1": 85.29, "results": {
        "bwn/ste": {"runs": [{"final_top1": 83.76}, {"final_top1": None, "diverged": "nan"}], "diverged_runs": 1}}}
    (results / "metaquant_x.json").write_text(json.dumps(meta))
    text = script.history(results, tmp_path)
    assert "| xnor | 800.0 | 1.600 | **missed** |" in text
    assert ("| fbs_cifar10_e14.json | 14 | 0.01 | 1 | 84.00 | 2.58 | 2.64 | 1.90 | "
            "top1_drop<=2.0: **missed**, macs_ratio>=2: met |") in text
    assert "| metaquant_x.json | 85.29 | bwn/ste | 83.76, diverged | 1 |" in text
    assert "Co-Prune" not in text  # no file, no section
    # the scripts that made these files are gone: the history names them and their last commit
    assert "Made by `benchmarks/fbs_cifar10.py`, since removed (last in commit e4fa60b" in text
    assert "Made by `benchmarks/metaquant_fmnist.py`, since removed (last in commit b96c7b1" in text


def test_readme_block_has_fresh_seeds_and_links_the_history(tmp_path, script):
    results = tmp_path / "results"
    for seed, top1 in ((2, 85.0), (3, 85.4)):
        folder = results / f"cifar10-seed{seed}"
        folder.mkdir(parents=True)
        rows = [{"key": "fp", "method": "fp32", "label": "full precision", "status": "ok", "top1": 86.0},
                {"key": "l", "method": "ldnq", "label": "L-DNQ 5 levels", "status": "ok", "top1": top1,
                 "val_top1": 86.0, "seed": seed, "target_drop": 1.2}]
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "runs.jsonl").write_text(json.dumps({"command": f"deepshrink bench --seed {seed}"}) + "\n")
    text = script.section(results, tmp_path)
    assert "| L-DNQ 5 levels | ldnq | 2, 3 | 85.20 ± 0.28 |" in text and "| 0.80 ± 0.28 | 1.2 | met |" in text
    assert "`deepshrink bench --seed 2`, `deepshrink bench --seed 3`" in text
    assert "[HISTORY.md](HISTORY.md)" in text
    assert "L-DNQ 5 levels" not in script.history(results, tmp_path)  # seed folders only in the README


def test_runtime_tables_show_every_engine_and_kernel(tmp_path, script):
    speed = {"command": "python benchmarks/speed_resnet20.py", "rounds": 5, "models": {"ldnq-l3": {
        "file_bytes": 90590, "rows": [
            {"engine": "torch-fp32", "batch": 1, "threads": 1, "median_ms": 2.9, "resident_bytes": 1096336, "top1": 84.3},
            {"engine": "onnxruntime-int8", "batch": 1, "threads": 1, "median_ms": 0.38, "resident_bytes": 314671,
             "top1": 84.35}]}}}
    bits = {"command": "python benchmarks/bits_kernels.py", "batch": 1, "threads": 1, "rounds": 21, "layers": {
        "layer3 64->64 8x8": {"median_us": {"torch-fp32": 83.3, "avx512 conv": 6.0},
                              "speedup": {"avx512 conv": {"vs torch-fp32": 13.86, "vs ort-int8": 3.22}}}}}
    text = "\n".join(script.speed_table(speed) + script.bits_table(bits))
    assert "| ldnq-l3 | 90,590 B | onnxruntime-int8 | 0.380 | 314,671 | 84.35 |" in text
    assert "| layer3 64->64 8x8 | avx512 conv | 6.0 | 13.86 | 3.22 |" in text
    results = tmp_path / "results"
    results.mkdir()
    (results / "speed_resnet20.json").write_text(json.dumps(speed))
    (results / "bits_kernels.json").write_text(json.dumps(bits))
    text = "\n".join(script.runtime_tables(results))  # no suite results yet: the retired scripts' files, named
    assert "written by `benchmarks/speed_resnet20.py` (removed; last in commit 41d8e64)" in text
    assert "written by `benchmarks/bits_kernels.py` (removed; last in commit 1914cca)" in text
    assert "| ldnq-l3 | 90,590 B | onnxruntime-int8 | 0.380 | 314,671 | 84.35 |" in text


def test_runtime_tables_read_the_speed_suite_once_it_has_results(tmp_path, script):
    results = tmp_path / "results"
    folder = results / "resnet20-speed"
    folder.mkdir(parents=True)
    (results / "speed_resnet20.json").write_text(json.dumps({"command": "old script", "models": {"x": {"rows": []}}}))
    setup = {"cpu": "AMD EPYC", "torch": "2.13", "onnxruntime": "1.32", "rounds": 20, "calibration_images": 450}
    rows = [{"engine": "onnxruntime-int8", "batch": b, "threads": 1, "median_ms": ms, "resident_bytes": 314671,
             "top1": 84.35} for b, ms in ((1, 0.35), (64, 19.4))]
    rows += [{"engine": "torch-fp32", "batch": b, "threads": 1, "median_ms": ms, "resident_bytes": 1096336,
              "top1": 86.58, "model": "base"} for b, ms in ((1, 2.8), (64, 70.0))]
    ldnq = {"key": "l", "method": "ldnq", "label": "L-DNQ 3 levels", "status": "ok", "top1": 84.3, "bytes": 90590,
            "speed_rows": rows, "speed_setup": setup, "speed_engine": "onnxruntime-int8", "engine_top1": 84.35,
            "speedup_vs_torch_fp32": {"batch1": 8.0, "batch64": 3.61},
            "speed_vs_onnxruntime_int8_ptq": {"batch1": 0.85, "batch64": 1.0}}
    (folder / "results.jsonl").write_text(json.dumps(ldnq) + "\n")
    (folder / "runs.jsonl").write_text(json.dumps({"command": "deepshrink bench --suite resnet20-speed"}) + "\n")
    text = "\n".join(script.runtime_tables(results))
    assert "old script" not in text and "removed; last in commit 41d8e64" not in text
    assert "Top-1 from `deepshrink bench --suite resnet20-speed`" in text and "calibrated on 450 training" in text
    assert "| L-DNQ 3 levels | 90,590 B | 84.30 | 84.35 (+0.05) | 0.350 | 8.00 |  | 0.85 **missed** | 19.400 | " \
           "3.61 |  | 1.00 |" in text
    assert "| float base (the suite's checkpoint) | — | torch-fp32 | 2.800 | 70.000 | 1,096,336 | 86.58 |" in text
    assert "| L-DNQ 3 levels | 90,590 B | onnxruntime-int8 | 0.350 | 19.400 | 314,671 | 84.35 |" in text
    assert "resnet20-speed" not in script.history(results, tmp_path)  # its tables are the README's


def test_seed_repository_tables_put_our_rows_beside_the_seeds(tmp_path, script):
    results = tmp_path / "results"
    for seed, (ldnq, rtn, w8a8) in {2: (84.3, 79.5, 86.4), 3: (84.5, 79.6, 86.2)}.items():
        folder = results / f"cifar10-seed{seed}"
        folder.mkdir(parents=True)
        rows = [{"key": "fp", "method": "fp32", "label": "full precision", "top1": 86.58},
                {"key": "l", "method": "ldnq", "label": "L-DNQ 3 levels", "top1": ldnq, "target_drop": 3.0},
                {"key": "r", "method": "ldnq_rtn", "label": "round-to-nearest 3 levels", "top1": rtn},
                {"key": "d", "method": "dorefa", "label": "DoReFa W8/A8", "top1": w8a8, "target_drop": 0.2}]
        (folder / "results.jsonl").write_text("".join(json.dumps({**r, "status": "ok", "seed": seed}) + "\n"
                                                      for r in rows))
    text = "\n".join(script.seed_repository_tables(results))
    assert "| ResNet-20 | 3 | — | 2.18 ± 0.14 | 7.03 ± 0.07 | 3 | met |" in text
    assert "| ResNet-20 | 7 | 5.55 | not run yet | not run yet |" in text
    assert "| ResNet-56 | 7 | 3.49 | not run yet | not run yet | 0.2 |  |" in text
    assert "| 8/8 | 1.25 | DoReFa W8/A8 | 86.30 ± 0.14 | 0.28 ± 0.14 | 0.2 | **missed** |" in text
    assert "| 1/1 | 32.08 | DoReFa W1/A1 | not run yet | not run yet |" in text
