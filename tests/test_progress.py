"""Progress of the long silent parts: plain lines when stderr is not a terminal, nothing when quiet.

Under pytest stderr is captured, not a terminal, so the plain-line form is what these tests see.
"""
from __future__ import annotations

import pytest
import torch

import deepshrink
import deepshrink.progress
from deepshrink.cli import main
from deepshrink.progress import Progress, quiet, style

LAYERS = ["fc1", "fc2", "fc3"]
RECIPE = {"method": "ldnq_rtn", "layers": [{"pattern": "fc*"}]}


@pytest.fixture
def net_and_data():
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet300", input_size=8, num_classes=10, in_channels=1)
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(3)]
    return model, data


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.endswith(" s so far)")]


def test_a_layer_wise_method_names_each_layer_in_a_line(net_and_data, capsys):
    model, data = net_and_data
    deepshrink.compress(model, RECIPE, calib_data=data)
    lines = [line for line in _progress_lines(capsys.readouterr().err) if line.startswith("ldnq_rtn: ")]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert [line.split()[3] for line in lines] == [f"{name}:" for name in LAYERS]  # in execution order
    assert all("bits/weight" in line for line in lines)


def test_evaluation_and_packing_report_batches_and_weights(net_and_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(deepshrink.progress, "LINE_SECONDS", 0.0)  # a line per step, however fast
    model, data = net_and_data
    result = deepshrink.compress(model, RECIPE, calib_data=data)
    capsys.readouterr()
    deepshrink.evaluate(result.model, data)
    deepshrink.pack(result.model, tmp_path / "m.dsz")
    lines = _progress_lines(capsys.readouterr().err)
    assert [line.split(" (")[0] for line in lines] == [
        "evaluate: batch 1/3", "evaluate: batch 2/3", "evaluate: batch 3/3",
        "pack: weight 1/3", "pack: weight 2/3", "pack: weight 3/3"]


def test_quiet_silences_every_progress_report_but_not_results(net_and_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(deepshrink.progress, "LINE_SECONDS", 0.0)
    model, data = net_and_data
    with deepshrink.quiet():
        result = deepshrink.compress(model, RECIPE, calib_data=data, val_data=data)
        deepshrink.pack(result.model, tmp_path / "m.dsz")
        assert style(bar=True) == "off"
    assert capsys.readouterr().err == ""
    assert style(bar=True) == "bar" and style(bar=None) == "lines"  # restored when the block ends


def test_plain_lines_for_anonymous_steps_come_at_most_every_line_seconds(capsys, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 13.0])  # start, one reading per update, close
    monkeypatch.setattr(deepshrink.progress, "_clock", lambda: next(clock))
    with Progress("evaluate", 4, "batch", bar=False) as progress:
        for _ in range(4):
            progress.update()
    lines = capsys.readouterr().err.splitlines()
    # nothing for 10 s, a line at 11 s, and the final count since a line was printed
    assert [line.split(" (")[0] for line in lines] == ["evaluate: batch 3/4", "evaluate: batch 4/4"]


CLI = ["compress", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits"]


def test_cli_compress_shows_layers_and_quiet_hides_them(tmp_path, capsys):
    assert main(CLI + ["--method", "ldnq_rtn", "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "ldnq_rtn: layer 1/" in err
    assert main(CLI + ["--method", "ldnq_rtn", "-o", str(tmp_path / "b"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert _progress_lines(captured.err) == [] and "ldnq_rtn: test top-1" in captured.out
