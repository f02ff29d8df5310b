"""`deepshrink train` / `deepshrink eval`: real digits data, --json output, resume, exit status 2 on user errors."""
import json

import pytest
import torch

import deepshrink
from deepshrink.cli import main

MODEL = ["--model", "lenet300", "--model-args", "input_size=8"]
TRAIN = ["train", *MODEL, "--data", "digits", "--lr", "0.05", "--batch-size", "32", "--deterministic"]


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two epochs of LeNet-300-100 on sklearn digits (1437 train images: 1295 to train, 142 held out for
    validation; 360 test images)."""
    out = tmp_path_factory.mktemp("run")
    assert main(TRAIN + ["--epochs", "2", "--out", str(out), "--json"]) == 0
    return out


def test_train_learns_digits_and_writes_its_run_folder(trained_run, capsys):
    assert main(TRAIN + ["--epochs", "2", "--out", str(trained_run), "--resume", "--json"]) == 0
    metrics = _last_json(capsys)  # a finished run resumes to the same final metrics, no extra step
    assert metrics["steps"] == 2 * (1295 // 32) and metrics["val_top1"] > 85.0 and metrics["test_top1"] > 80.0
    assert sorted(p.name for p in trained_run.iterdir()) == ["best.pt", "config.yaml", "curves.png", "final.json",
                                                             "last.pt", "metrics.jsonl"]
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 2


def test_eval_of_checkpoint_and_packed_file_agree_with_training(trained_run, capsys, tmp_path):
    best = torch.load(trained_run / "best.pt", weights_only=True)
    assert main(["eval", *MODEL, "--checkpoint", str(trained_run / "best.pt"), "--data", "digits", "--split", "val",
                 "--json"]) == 0
    from_checkpoint = _last_json(capsys)  # best.pt was chosen on the validation split
    assert from_checkpoint["n"] == 142
    assert from_checkpoint["top1"] == pytest.approx(best["metrics"]["val_top1"])
    model = deepshrink.create_model("lenet300", num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(best["model"])
    deepshrink.pack(model, tmp_path / "m.dsz")
    assert main(["eval", str(tmp_path / "m.dsz"), "--data", "digits", "--split", "val", "--json"]) == 0
    assert _last_json(capsys)["top1"] == pytest.approx(from_checkpoint["top1"])


def _user_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_eval_of_another_architecture_names_the_keys(resnet20_checkpoint, capsys):
    message = _user_error(["eval", *MODEL, "--checkpoint", str(resnet20_checkpoint), "--data", "digits"], capsys)
    assert "missing keys: fc1.bias, fc1.weight" in message and "unexpected keys: bn1.bias" in message


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert "is not a PyTorch checkpoint" in _user_error(
        ["eval", *MODEL, "--checkpoint", str(junk), "--data", "digits"], capsys)
    assert "cannot resume" in _user_error(TRAIN + ["--out", str(tmp_path / "new"), "--resume"], capsys)
    assert "train.schedule must be one of" in _user_error(TRAIN + ["--schedule", "linear", "--out",
                                                                   str(tmp_path / "x")], capsys)
    assert "fashion-mnist" in _user_error(["eval", *MODEL, "--checkpoint", str(junk), "--data", "fashion-mnist",
                                           "--data-root", str(tmp_path / "nowhere")], capsys)
    assert "is not a PyTorch checkpoint" in _user_error(["eval", str(junk), "--data", "digits"], capsys)


# ---------------------------------------------------------------- what a training checkpoint records
def test_train_checkpoints_record_their_network_and_data_set_loadable_weights_only(trained_run):
    for name in ("best.pt", "last.pt"):
        saved = torch.load(trained_run / name, weights_only=True)
        assert saved["arch"] == {"name": "lenet300", "kwargs": {"input_size": 8, "num_classes": 10, "in_channels": 1}}
        assert {k: saved["data"][k] for k in ("name", "input_shape", "num_classes")} == \
            {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10}


def test_eval_of_a_train_checkpoint_needs_no_model_or_data_flags(trained_run, capsys):
    best = torch.load(trained_run / "best.pt", weights_only=True)
    assert main(["eval", str(trained_run / "best.pt"), "--split", "val", "--json"]) == 0
    metrics = _last_json(capsys)
    assert metrics["data"] == "digits" and metrics["n"] == 142
    assert metrics["top1"] == pytest.approx(best["metrics"]["val_top1"])


def test_pack_of_a_train_checkpoint_needs_no_model_and_the_file_keeps_its_data_set(trained_run, tmp_path, capsys):
    best = torch.load(trained_run / "best.pt", weights_only=True)
    packed = tmp_path / "best.dsz"
    assert main(["pack", str(trained_run / "best.pt"), "-o", str(packed)]) == 0
    capsys.readouterr()
    assert main(["eval", str(packed), "--split", "val", "--json"]) == 0  # no --data: the .dsz records it
    assert _last_json(capsys)["top1"] == pytest.approx(best["metrics"]["val_top1"])
    repacked = tmp_path / "again.dsz"
    assert main(["pack", str(packed), "-o", str(repacked), "--fp16"]) == 0  # re-packing keeps the record
    from deepshrink.packing.format import recorded_data

    assert recorded_data(repacked)["name"] == "digits"


def test_compress_from_a_train_checkpoint_needs_no_model_or_data_flags(trained_run, tmp_path, capsys):
    argv = ["compress", "--method", "lobs", "--base", str(trained_run / "best.pt"), "-o", str(tmp_path / "r")]
    assert main(argv + ["--print-config"]) == 0
    import yaml

    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["name"] == "lenet300" and shown["model"]["args"]["input_size"] == 8
    assert shown["data"]["name"] == "digits"
    assert main(argv + ["--json"]) == 0
    metrics = _last_json(capsys)
    assert metrics["base_top1"] > 80  # the trained weights, in the network the checkpoint records


def test_a_plain_state_dict_still_needs_model_and_the_error_names_it(trained_run, tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(trained_run / "best.pt", weights_only=True)["model"], plain)
    for argv in (["eval", str(plain), "--data", "digits"], ["pack", str(plain), "-o", str(tmp_path / "p.dsz")],
                 ["compress", "--method", "lobs", "--base", str(plain), "--data", "digits", "-o", str(tmp_path / "r")]):
        message = _user_error(argv, capsys)
        assert f"{plain} does not record its architecture" in message and "--model NAME" in message
    assert not (tmp_path / "p.dsz").exists() and not (tmp_path / "r").exists()
    assert main(["eval", str(plain), "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits"]) == 0


def test_ctrl_c_in_epoch_two_saves_the_step_and_resume_ends_as_the_uninterrupted_run(trained_run, tmp_path,
                                                                                    capsys, monkeypatch):
    """The same command as `trained_run`, stopped by a real SIGINT at step 5 of epoch 2 and resumed."""
    import signal

    from deepshrink.engine import Trainer

    take_step = Trainer._train_step

    def step_then_ctrl_c(trainer, inputs, targets):
        result = take_step(trainer, inputs, targets)
        if trainer.step == trainer.steps_per_epoch + 5:
            signal.raise_signal(signal.SIGINT)
        return result

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", step_then_ctrl_c)
        assert main(TRAIN + ["--epochs", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"saved epoch 2 after step 5/40 to {out / 'last.pt'}" in err
    assert f"the same command with --resume continues from {out / 'last.pt'}" in err
    assert main(TRAIN + ["--epochs", "2", "--out", str(out), "--resume"]) == 0
    straight, resumed = (torch.load(run / "last.pt", weights_only=True) for run in (trained_run, out))
    assert straight["step"] == resumed["step"] == 80
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
