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
    assert "--model NAME is needed" in _user_error(["eval", str(junk), "--data", "digits"], capsys)
