"""Bad input gets one line naming the problem and the fix, exit status 2, no traceback, nothing lost."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepshrink import list_methods
from deepshrink.cli import main
from deepshrink.registry import METHODS

COMPRESS = ["compress", "--method", "bwn", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits"]


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("setting, message", [
    ("train.lr=abc", "lr must be a number, got 'abc'"),
    ("train.epochs=[3]", "epochs must be a number"),
])
def test_a_setting_of_the_wrong_type_is_named(setting, message, tmp_path, capsys):
    assert message in _one_line_error(COMPRESS + ["--out", str(tmp_path / "r"), "--set", setting], capsys)
    assert not (tmp_path / "r").exists()


def test_a_method_parameter_of_the_wrong_type_is_named(tmp_path, capsys):
    line = _one_line_error(["compress", "--method", "pq", "--model", "lenet300", "--model-args", "input_size=8",
                            "--data", "digits", "--out", str(tmp_path / "r"), "--set", "n_centroids=abc"], capsys)
    assert "n_centroids must be an integer, got 'abc'" in line


def test_an_unknown_model_argument_lists_the_accepted_ones(tmp_path, capsys):
    line = _one_line_error(["compress", "--method", "bwn", "--model", "lenet300", "--model-args", "shortcutt=B",
                            "--data", "digits", "--out", str(tmp_path / "r")], capsys)
    assert "shortcutt" in line and "accepts: num_classes, in_channels, input_size" in line


def test_an_existing_run_is_never_overwritten_without_asking(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "model.dsz").write_bytes(b"an earlier run")
    line = _one_line_error(COMPRESS + ["--out", str(out)], capsys)
    assert "--overwrite" in line and (out / "model.dsz").read_bytes() == b"an earlier run"


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    assert "nothing to resume" in _one_line_error(COMPRESS + ["--out", str(tmp_path / "r"), "--resume"], capsys)


def test_print_config_shows_the_resolved_recipe_and_runs_nothing(tmp_path, capsys):
    assert main(COMPRESS + ["--out", str(tmp_path / "r"), "--set", "train.epochs=3", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["recipe"]["method"] == "bwn" and shown["recipe"]["train"]["epochs"] == 3
    assert shown["model"]["args"] == {"input_size": 8} and shown["device"] == "cpu"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", list_methods())
def test_print_config_spells_out_every_method_parameter_and_loads_back(method, tmp_path, capsys):
    from deepshrink.config import load_recipe

    argv = ["compress", "--method", method, *COMPRESS[3:], "--out", str(tmp_path / "r"), "--print-config"]
    assert main(argv) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)["recipe"]
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).config_cls)}
    assert set(recipe["params"]) == fields  # defaults included: the settings the run will use
    assert json.loads(json.dumps(load_recipe(recipe).to_dict())) == recipe  # tuples read back as lists


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("deepshrink ")


def test_a_closed_pipe_ends_quietly():
    reader = subprocess.run(f"{sys.executable} -m deepshrink recipes --json | head -c 1", shell=True,
                            capture_output=True, text=True, timeout=120)
    assert reader.stdout == "[" and "Traceback" not in reader.stderr and "BrokenPipe" not in reader.stderr


def test_train_refuses_to_replace_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an 85% model")
    line = _one_line_error(["train", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits",
                            "--out", str(out)], capsys)
    assert "--overwrite" in line and (out / "best.pt").read_bytes() == b"an 85% model"


def test_settings_that_compress_nothing_say_the_file_is_larger(tmp_path, capsys):
    assert main(["compress", "--method", "lobs", "--model", "lenet300", "--model-args", "input_size=8",
                 "--data", "digits", "--out", str(tmp_path / "r"), "--set", "sparsity=0"]) == 0
    assert "LARGER than the fp32 weights (these settings compress nothing)" in capsys.readouterr().out


@pytest.mark.parametrize("recipe, message", [
    ("method: bwn\nlayers: {pattern: fc1}\n", "layers must be a list of mappings"),
    ("method: bwn\nlayers: [fc1]\n", "layers[0] must be a mapping"),
    ("method: bwn\nparams: [3]\n", "params must be a mapping"),
])
def test_a_recipe_of_the_wrong_shape_is_named(recipe, message, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    line = _one_line_error(["compress", "--recipe", str(path), "--model", "lenet300", "--model-args", "input_size=8",
                            "--data", "digits", "--out", str(tmp_path / "r")], capsys)
    assert message in line


def test_an_interrupt_says_how_to_resume_or_that_nothing_was_saved(tmp_path, capsys, monkeypatch):
    import deepshrink.pipeline

    def interrupted(spec, **kwargs):
        if "saving" in str(spec.out):
            (spec.out / "train").mkdir(parents=True)
            (spec.out / "train" / "last.pt").write_bytes(b"a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(deepshrink.pipeline, "run_compress", interrupted)
    assert main(COMPRESS + ["--out", str(tmp_path / "saving")]) == 130
    last = tmp_path / "saving" / "train" / "last.pt"
    assert f"the same command with --resume continues from {last}" in capsys.readouterr().err
    assert main(COMPRESS + ["--out", str(tmp_path / "r")]) == 130  # a layer-wise method saves no checkpoint
    assert "nothing was saved to resume from" in capsys.readouterr().err


def test_overwrite_replaces_a_run_but_never_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("my own work")
    (out / "model.dsz").write_bytes(b"an earlier run")
    line = _one_line_error(COMPRESS + ["--out", str(out), "--overwrite"], capsys)
    assert "refusing to delete it" in line and (out / "notes.txt").read_text() == "my own work"
    (out / "notes.txt").unlink()
    assert main(COMPRESS + ["--out", str(out), "--overwrite", "--set", "train.epochs=1"]) == 0
    assert (out / "model.dsz").read_bytes() != b"an earlier run"


def test_train_overwrite_replaces_its_own_run(tmp_path):
    argv = ["train", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits", "--epochs", "1",
            "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert main(argv + ["--overwrite"]) == 0


def test_compress_without_a_model_names_both_ways_to_give_one(tmp_path, capsys):
    line = _one_line_error(["compress", "--method", "bwn", "--data", "digits", "--out", str(tmp_path / "r")], capsys)
    assert "--model NAME" in line and "--base CKPT written by `deepshrink train`" in line
    assert not (tmp_path / "r").exists()


def test_the_cli_prints_its_warnings_as_one_line_naming_the_command():
    import warnings

    from deepshrink.cli import _one_line_warnings

    with _one_line_warnings("compress"):
        line = warnings.formatwarning("layer pattern(s) ['*.downsample.*'] match nothing", UserWarning, "x.py", 3)
        other = warnings.formatwarning("old", DeprecationWarning, "x.py", 3)
    assert line == "deepshrink compress: warning: layer pattern(s) ['*.downsample.*'] match nothing\n"
    assert "DeprecationWarning" in other  # not ours: Python's own format
    assert "UserWarning" in warnings.formatwarning("m", UserWarning, "x.py", 3)  # restored on exit
