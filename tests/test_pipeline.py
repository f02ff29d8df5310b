"""`deepshrink compress` end to end on real (tiny) data: run folder, packed file, figures from the file."""
import json

import pytest

from deepshrink.cli import main


def test_compress_cli_writes_a_run_folder_whose_figures_come_from_the_packed_file(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--method", "bwn", "--model", "lenet300", "--model-args", "input_size=8",
                 "--data", "digits", "--out", str(out), "--set", "train.epochs=1", "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out / "model.dsz").stat().st_size == metrics["file_bytes"]
    assert (out / "recipe.yaml").exists() and json.loads((out / "metrics.json").read_text()) == metrics
    # LeNet-300-100 on 8x8 digits: 64*300 + 300*100 + 100*10 weights + biases
    assert metrics["fp32_bytes"] == 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    # only the 300->100 layer is binary (1 bit + a scale per filter); first and last layers stay fp32
    payload = 4 * (64 * 300 + 300 + 100 + 100 * 10 + 10) + 300 * 100 // 8 + 4 * 100
    assert payload <= metrics["file_bytes"] <= payload * 1.02 + 4096
    assert metrics["val_top1"] == pytest.approx(metrics["val_top1_in_memory"], abs=1e-6)


def test_a_layerwise_run_folder_holds_the_drivers_layer_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", "--method", "ldnq_rtn", "--model", "lenet300", "--model-args", "input_size=8",
                 "--data", "digits", "--out", str(out), "--set", "params.levels=3"]) == 0
    report = json.loads((out / "layers.json").read_text())  # read by the bench's layer_seconds measure
    assert list(report["layers"]) == ["fc2"]  # the 300->100 layer; first and last stay fp32
    assert report["seconds"] == pytest.approx(report["layers"]["fc2"]["seconds"])
    assert report["layers"]["fc2"]["numel"] == 300 * 100 and report["bits_per_weight"] < 3


def test_compress_cli_refuses_both_recipe_and_method(tmp_path, capsys):
    code = main(["compress", "--method", "bwn", "--recipe", "bwn", "--model", "lenet300", "--data", "digits",
                 "--out", str(tmp_path / "r")])
    assert code == 2
    assert "exactly one of --recipe" in capsys.readouterr().err


def test_compress_cli_unknown_method_lists_methods(tmp_path, capsys):
    code = main(["compress", "--method", "nosuch", "--model", "lenet300", "--data", "digits",
                 "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown method 'nosuch'" in err and "bwn" in err


def test_compress_resume_continues_from_the_last_finished_epoch(tmp_path, capsys):
    """An interrupted QAT run restarted with --resume picks up last.pt instead of training again."""
    out = tmp_path / "run"
    args = ["compress", "--method", "bwn", "--model", "lenet300", "--model-args", "input_size=8",
            "--data", "digits", "--out", str(out), "--set", "train.epochs=2", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    epochs_logged = (out / "train" / "metrics.jsonl").read_text().count('"epoch"')
    assert epochs_logged >= 2
    assert main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out.strip().splitlines()[-1])
    assert "resumed from" in captured.out + captured.err
    # nothing left to train: no new epoch lines, and the same model as the finished run
    assert (out / "train" / "metrics.jsonl").read_text().count('"epoch"') == epochs_logged
    assert second["top1"] == first["top1"] and second["file_bytes"] == first["file_bytes"]


def test_a_packed_run_records_its_data_set_so_eval_needs_no_data_flag(tmp_path, capsys):
    from deepshrink.packing.format import recorded_data

    out = tmp_path / "run"
    assert main(["compress", "--method", "ldnq", "--model", "lenet300", "--model-args", "input_size=8",
                 "--data", "digits", "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = recorded_data(out / "model.dsz")
    assert recorded["name"] == "digits" and recorded["input_shape"] == [1, 8, 8] and recorded["num_classes"] == 10
    assert main(["eval", str(out / "model.dsz"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["data"] == "digits" and evaluated["top1"] == pytest.approx(metrics["top1"])
    import onnx

    assert main(["export", str(out / "model.dsz"), "-o", str(tmp_path / "m.onnx")]) == 0  # shape from the file
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["deepshrink.name"] == "digits" and props["deepshrink.mean"] == recorded["mean"]
