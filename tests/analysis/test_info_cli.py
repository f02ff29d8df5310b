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
