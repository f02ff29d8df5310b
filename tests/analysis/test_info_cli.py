"""`deepshrink info`: the table, the JSON line and the error exit status."""
from __future__ import annotations

import json

from deepshrink.cli import main


def test_info_json_is_the_last_line(capsys):
    assert main(["info", "--model", "resnet20", "--model-args", "shortcut=B", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["totals"]["params"] == 272_474  # the shared checkpoint's README
    assert report["input_size"] == [3, 32, 32]
    names = [row["name"] for row in report["layers"]]
    assert "layer2.0.downsample.0" in names and names[-1] == "fc"


def test_info_table_and_size_flags(capsys):
    assert main(["info", "--model", "lenet300", "--input-size", "32", "--in-channels", "3",
                 "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "total" in out
    expected = 3 * 32 * 32 * 300 + 300 + 300 * 100 + 100 + 100 * 100 + 100
    assert f"{expected:,}" in out


def test_unknown_model_exits_2_listing_models(capsys):
    assert main(["info", "--model", "resnet21", "--json"]) == 2
    err = capsys.readouterr().err
    assert "resnet21" in err and "resnet20" in err and "vgg_small" in err
    assert "Traceback" not in err


def test_missing_file_exits_2(capsys, tmp_path):
    assert main(["info", str(tmp_path / "nope.dsz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_info_reads_a_packed_file_at_its_bit_widths(capsys, tmp_path):
    import torch

    import deepshrink
    from deepshrink.nn import CompressedLinear, EncodedWeight, set_module

    model = deepshrink.create_model("lenet5")
    shape = tuple(model.fc2.weight.shape)  # (84, 120)
    encoded = EncodedWeight("uniform", shape, torch.randint(0, 16, shape),
                            {"scale": torch.full((1,), 0.01), "zero_point": torch.full((1,), 8.0)}, bits=4)
    set_module(model, "fc2", CompressedLinear.from_linear(model.fc2, encoded))
    path = tmp_path / "lenet5.dsz"
    deepshrink.pack(model, path)
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fc2 = next(row for row in report["layers"] if row["name"] == "fc2")
    assert fc2["weight_bits"] == 4 and fc2["macs"] == 84 * 120
    assert fc2["bytes"] == 84 * 120 // 2 + 4 + 4 + 84 * 4  # 4-bit codes, scale, zero point, float bias
    assert report["totals"]["params"] == 61_706
