"""A run is resolved once: the CLI, a bench row and the Python API give the same `RunSpec`; bad input is one
line naming the fix; `--print-config` shows the spec and loads back; the fp32 reference is a method."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import deepshrink
from deepshrink.bench.plan import plan_rows
from deepshrink.bench.rows import spec_from_row
from deepshrink.config import RECIPE_DIR
from deepshrink.bench.runner import RowTask
from deepshrink.bench.suite import load_suite
from deepshrink.cli import build_parser, main
from deepshrink.cli.compress import spec_from_args
from deepshrink.errors import UserError
from deepshrink.spec import Processes, RunSpec, run_spec

MODEL_ARGS = {"input_size": 8}  # LeNet-300-100 on scikit-learn's 8x8 digits: a whole run in a few seconds


@pytest.fixture
def base(tmp_path) -> Path:
    """A plain state_dict of the network every test here compresses."""
    path = tmp_path / "base.pt"
    torch.save(deepshrink.create_model("lenet300", num_classes=10, in_channels=1, **MODEL_ARGS).state_dict(), path)
    return path


def _cli_spec(argv: list[str]) -> RunSpec:
    return spec_from_args(build_parser().parse_args(["compress", *argv]))


def test_the_three_front_ends_give_the_same_spec(base, tmp_path):
    out = tmp_path / "run"
    cli = _cli_spec(["--method", "magnitude", "--set", "sparsity=0.5", "--model", "lenet300", "--model-args",
                     "input_size=8", "--base", str(base), "--data", "digits", "-o", str(out)])
    api = run_spec({"method": "magnitude", "params": {"sparsity": 0.5}}, model="lenet300", model_args=MODEL_ARGS,
                   base=base, data="digits", out=out)
    suite = load_suite({"name": "s", "model": {"name": "lenet300", "args": MODEL_ARGS}, "data": {"name": "digits"},
                        "rows": [{"method": "magnitude", "set": ["params.sparsity=0.5"]}]})
    row = next(r for r in plan_rows(suite, "sha256:x") if r.method == "magnitude")
    bench = spec_from_row(RowTask(suite, row, base, out, suite.seed))
    assert cli == api
    assert bench == dataclasses.replace(api, evaluate_base=False)  # a bench row leaves the base to the fp32 row
    assert api.recipe.params == {"sparsity": 0.5} and api.model.args == MODEL_ARGS and api.device == "cpu"
    assert api.data.input_shape == (1, 8, 8) and api.processes == Processes(rank=0, world_size=1, local_rank=0)


def test_a_method_name_a_recipe_name_and_a_file_resolve_by_one_rule(tmp_path):
    assert run_spec("magnitude", model="lenet5", data="digits", out=tmp_path).recipe.params == {}  # its defaults
    assert run_spec("bwn", model="lenet5", data="digits", out=tmp_path).recipe.train.epochs == 8  # bwn.yaml wins
    path = tmp_path / "mine.yaml"
    path.write_text("method: lobs\nparams: {sparsity: 0.3}\n")
    assert run_spec(str(path), model="lenet5", data="digits", out=tmp_path).recipe.params == {"sparsity": 0.3}


def test_method_on_the_cli_runs_what_the_method_name_does_in_the_api_and_the_bench(tmp_path, monkeypatch):
    # --method NAME: the built-in recipe named after the method (its best by validation), else its defaults;
    # a file of that name in the working folder does not shadow it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bwn").write_text("method: bwn\ntrain: {epochs: 1}\n")
    flags = ["--model", "lenet300", "--model-args", "input_size=8", "--data", "digits", "-o", str(tmp_path / "r")]
    builtin = run_spec(str(RECIPE_DIR / "bwn.yaml"), model="lenet300", model_args=MODEL_ARGS, data="digits",
                       out=tmp_path / "r")
    assert _cli_spec(["--method", "bwn", *flags]).recipe == builtin.recipe
    assert _cli_spec(["--method", "magnitude", *flags]).recipe.params == {}


@pytest.mark.parametrize("settings, message", [
    ({"recipe": "nosuch"}, "neither a file nor a built-in recipe nor a method"),
    ({"recipe": {"method": "pq", "params": {"n_centroids": "abc"}}}, "n_centroids must be an integer"),
    ({"model": "resnet21"}, "unknown model 'resnet21'; choose one of"),
    ({"model_args": "shortcutt=B"}, "accepts: num_classes, in_channels, input_size"),
    ({"data": "cifar11"}, "unknown data set 'cifar11'"),
    ({"data": "mnist", "data_root": "EMPTY"}, "pass --data-root DIR"),
    ({"data": None}, "no data set given; pass --data NAME"),
    ({"model": None}, "no model given; pass --model NAME"),
    ({"base": "MISSING"}, "does not exist"),
    ({"base": "PLAIN", "model": None}, "does not record its architecture"),
    ({"device": "gpu"}, "unknown device 'gpu'; use cpu or cuda[:N]"),
    ({"train_subset": 0}, "train_subset must be a ratio in (0, 1] or an image count"),
])
def test_bad_input_is_one_line_naming_the_problem_and_the_fix(settings, message, base, tmp_path):
    paths = {"EMPTY": tmp_path / "empty", "MISSING": tmp_path / "missing.pt", "PLAIN": base}
    (tmp_path / "empty").mkdir()
    values = {"recipe": {"method": "magnitude"}, "model": "lenet300", "model_args": MODEL_ARGS, "data": "digits",
              "out": tmp_path / "run"}
    values.update({k: paths.get(v, v) if isinstance(v, str) else v for k, v in settings.items()})
    with pytest.raises(UserError) as caught:
        run_spec(values.pop("recipe"), **values)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_the_processes_come_from_torchruns_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    spec = run_spec("magnitude", model="lenet5", data="digits", out=tmp_path)
    assert spec.processes == Processes(rank=1, world_size=2, local_rank=1) and spec.device == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        run_spec("magnitude", model="lenet5", data="digits", out=tmp_path)


def test_print_config_shows_the_spec_creates_nothing_and_loads_back(base, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compress", "--method", "ldnq", "--set", "levels=3", "--model", "lenet300", "--model-args",
            "input_size=8", "--base", str(base), "--data", "digits", "-o", str(out)]
    assert main(argv + ["--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert not out.exists()
    assert shown["model"] == {"name": "lenet300", "args": MODEL_ARGS, "base": str(base)}
    assert shown["data"]["splits"]["val"] == {"split": "train", "ratio_per_class": 0.1, "seed": 0}
    assert shown["data"]["preprocessing"]["input_shape"] == [1, 8, 8]
    assert shown["device"] == "cpu" and shown["processes"] == {"rank": 0, "world_size": 1, "local_rank": 0}
    assert shown["recipe"]["params"]["levels"] == 3 and "damp" in shown["recipe"]["params"]  # defaults spelled out
    again = RunSpec.from_dict(shown)
    assert again.to_dict() == shown  # what it prints is a run it can read back
    assert again.recipe.method_config() == _cli_spec(argv[1:]).recipe.method_config()
    # the same flags without --print-config run that spec
    assert main(argv + ["--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["packed"] == str(out / "model.dsz") and metrics["method"] == "ldnq" and metrics["epochs"] == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["params"] == {"levels": 3}


def test_the_fp32_reference_is_the_base_packed_as_it_is(base, tmp_path):
    from deepshrink.engine.checkpoint import load_weights

    spec = run_spec("fp32", model="lenet300", model_args=MODEL_ARGS, base=base, data="digits", out=tmp_path / "fp")
    metrics = deepshrink.run_compress(spec)
    assert metrics["kind"] == "baseline" and metrics["epochs"] == 0 and metrics["classes"] == 10
    assert metrics["top1"] == pytest.approx(metrics["base_top1"]) and metrics["drop"] == 0
    assert metrics["val_top1"] == pytest.approx(metrics["val_top1_in_memory"])
    # fp32 payload: every parameter at 4 bytes, plus the file's header
    assert metrics["fp32_bytes"] <= metrics["file_bytes"] <= metrics["fp32_bytes"] + 4096
    reference = load_weights(deepshrink.create_model("lenet300", num_classes=10, in_channels=1, **MODEL_ARGS), base)
    loaded = deepshrink.load(tmp_path / "fp" / "model.dsz")
    images = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded.eval()(images), reference.eval()(images))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the CPU case runs"))])
def test_compress_places_a_cpu_model_on_the_device_it_is_given(device):
    """One move, before the method: the layer-wise driver's calibration batches and the model agree."""
    model = deepshrink.create_model("lenet300", num_classes=10, in_channels=1, **MODEL_ARGS)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    result = deepshrink.compress(model, "ldnq", calib_data=data, val_data=data, device=device)
    assert {p.device.type for p in result.model.parameters()} == {device}
    assert result.kind == "layerwise" and result.metrics["epochs"] == 0 and 0 <= result.metrics["top1"] <= 100


def test_a_spec_missing_a_part_names_what_it_needs():
    with pytest.raises(UserError, match="a run spec needs recipe, model: .* and out; missing 'model'"):
        RunSpec.from_dict({"recipe": {"method": "fp32"}, "data": {"name": "digits"}, "out": "run"})
