"""`deepshrink pack / inspect / export` on real files, and their one-line errors."""
import json

import torch

import deepshrink
from deepshrink.cli import main


def test_pack_a_run_folder_repack_a_dsz_and_a_float_checkpoint(every_encoding_model, tmp_path, capsys):
    model, _ = every_encoding_model
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    deepshrink.pack(model, run_dir / "model.dsz")
    assert main(["pack", str(run_dir), "-o", str(tmp_path / "a.dsz"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["totals"]["file_bytes"] == (tmp_path / "a.dsz").stat().st_size
    assert main(["pack", str(tmp_path / "a.dsz"), "-o", str(tmp_path / "b.dsz"), "--fp16", "--entropy",
                 "--ternary-base3", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["options"] == {"float_dtype": "fp16", "ternary_base3": True, "entropy": True}
    assert second["totals"]["file_bytes"] < first["totals"]["file_bytes"]

    float_model = deepshrink.create_model("lenet5")
    torch.save(float_model.state_dict(), tmp_path / "lenet.pt")
    assert main(["pack", str(tmp_path / "lenet.pt"), "--model", "lenet5", "-o", str(tmp_path / "c.dsz")]) == 0
    assert "ratio 1.00x" in capsys.readouterr().out
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(deepshrink.load(tmp_path / "c.dsz")(images), float_model.eval()(images))


def test_inspect_prints_a_table_or_json(every_encoding_model, tmp_path, capsys):
    deepshrink.pack(every_encoding_model[0], tmp_path / "m.dsz")
    assert main(["inspect", str(tmp_path / "m.dsz")]) == 0
    table = capsys.readouterr().out
    assert "layer1.0.conv1" in table and "binary 1b" in table and "ratio" in table
    assert main(["inspect", str(tmp_path / "m.dsz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(row["bytes"] for row in report["layers"]) == (tmp_path / "m.dsz").stat().st_size


def test_export_writes_a_verified_onnx_file(every_encoding_model, tmp_path, capsys):
    deepshrink.pack(every_encoding_model[0], tmp_path / "m.dsz")
    assert main(["export", str(tmp_path / "m.dsz"), "-o", str(tmp_path / "m.onnx")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["integer_layers"] == 9 and info["gather_layers"] == 3 and (tmp_path / "m.onnx").stat().st_size > 0


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    torch.save({}, tmp_path / "x.pt")
    (tmp_path / "bad.dsz").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    cases = [(["pack", str(tmp_path / "x.pt"), "-o", str(tmp_path / "o.dsz")], "--model NAME"),
             (["pack", str(tmp_path), "-o", str(tmp_path / "o.dsz")], "holds no model.dsz"),
             (["inspect", str(tmp_path / "bad.dsz")], "bad.dsz"),
             (["export", str(tmp_path / "missing.dsz"), "-o", str(tmp_path / "o.onnx")], "no such file")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
