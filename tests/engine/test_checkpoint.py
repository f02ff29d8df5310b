"""Checkpoints: atomic writes, weights_only loading, exact resume, clear errors on the wrong file."""
import json
import os

import pytest
import torch
from torch import nn

from deepshrink.config import TrainConfig
from deepshrink.engine import Hook, Trainer, load_weights, read_checkpoint, save_checkpoint
from deepshrink.engine.runlog import RunLog
from deepshrink.errors import UserError

CONFIG = TrainConfig(epochs=3, lr=0.05, schedule="onecycle", deterministic=True, seed=3, max_steps_per_epoch=4)


class Interrupt(Hook):
    def on_epoch_start(self, trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_run_ends_with_identical_weights(make_net, make_loader_pair, tmp_path):
    straight = make_net()
    Trainer(straight, *make_loader_pair(), CONFIG, run_dir=tmp_path / "a").fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_net(), *make_loader_pair(), CONFIG, hooks=[Interrupt()], run_dir=tmp_path / "b").fit()
    torch.manual_seed(999)  # the resumed process starts from other RNG states and other weights
    resumed = make_net(seed=7)
    trainer = Trainer(resumed, *make_loader_pair(), CONFIG, run_dir=tmp_path / "b", resume=tmp_path / "b" / "last.pt")
    trainer.fit()
    assert trainer.step == 3 * 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # the run's training time counts the interrupted process's epochs too, not only the resumed one's
    log = RunLog(tmp_path / "b", progress=False)
    log.load_history()
    assert log.epoch_seconds() == pytest.approx(sum(json.loads(line)["epoch_seconds"] for line in lines))
    assert log.epoch_seconds() > trainer.log.history[-1]["epoch_seconds"] > 0


def test_run_folder_and_checkpoint_contents(make_net, make_loader_pair, tmp_path):
    trainer = Trainer(make_net(), *make_loader_pair(), TrainConfig(epochs=2, lr=0.05), run_dir=tmp_path)
    final = trainer.fit()
    assert {"config.yaml", "metrics.jsonl", "curves.png", "last.pt", "best.pt"} <= set(os.listdir(tmp_path))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"train_loss", "val_top1", "val_top5", "lr", "images_per_s"} <= set(rows[0])
    last = torch.load(tmp_path / "last.pt", weights_only=True)  # loads without unpickling objects
    assert last["epoch"] == 2 and last["step"] == 12 and last["config"]["epochs"] == 2
    assert {"torch", "numpy", "python"} <= set(last["rng"]) and "state" in last["optimizer"]
    assert last["scheduler"]["last_epoch"] == 12
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["metrics"]["val_top1"] == max(r["val_top1"] for r in rows) == final["best_top1"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": torch.tensor(1)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_load_weights_accepts_state_dicts_and_training_checkpoints(make_net, make_loader_pair, tmp_path):
    source = make_net(seed=1)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("plain.pt", "ddp.pt"):
        target = load_weights(make_net(seed=2), tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    Trainer(source, make_loader_pair()[0], config=TrainConfig(epochs=1), run_dir=tmp_path / "run").fit()
    target = load_weights(make_net(seed=2), tmp_path / "run" / "last.pt")
    assert torch.equal(target[0].weight, source[0].weight)


def test_wrong_architecture_names_the_mismatching_keys(make_net, tmp_path):
    torch.save(make_net().state_dict(), tmp_path / "w.pt")
    other = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 4), nn.Linear(4, 2))
    with pytest.raises(UserError) as info:
        load_weights(other, tmp_path / "w.pt")
    message = str(info.value)
    assert "missing keys: 3.bias, 3.weight" in message
    assert "unexpected keys: 1.bias, 1.num_batches_tracked, 1.running_mean" in message
    assert "0.weight (4, 1, 3, 3) vs model (8, 1, 3, 3)" in message


@pytest.mark.parametrize("content", [b"hello", b"not a checkpoint at all\n", b"PK\x03\x04garbage"])
def test_a_file_that_is_not_a_checkpoint_is_a_user_error(make_net, tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        load_weights(make_net(), path)


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused_not_executed(make_net, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Payload()}, path)
    with pytest.raises(UserError, match="pickled objects other than tensors; deepshrink never runs code from a file"):
        load_weights(make_net(), path)


def test_missing_checkpoint_and_resume_from_a_plain_state_dict(make_net, make_loader_pair, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_weights(make_net(), tmp_path / "nope.pt")
    torch.save(make_net().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a training checkpoint"):
        Trainer(make_net(), make_loader_pair()[0], resume=tmp_path / "plain.pt").fit()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"hello 101\n", "neither a zip nor a pickle file"),
    (b'\x28\x01\x00\x00\x00\x00\x00\x00{"__metadata__":{"format":"deepshrink.dsz"}}', "is a packed deepshrink model"),
])
def test_foreign_checkpoints_are_refused_in_our_own_words(tmp_path, content, message):
    path = tmp_path / "base.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_checkpoint(path)


def test_recorded_model_reads_what_a_training_checkpoint_records_and_nothing_from_a_state_dict():
    from deepshrink.engine.checkpoint import FORMAT, recorded_model

    data = {"name": "digits", "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.5], "num_classes": 10,
            "root": "/somewhere", "train": 1295}
    saved = {"format": FORMAT, "arch": {"name": "lenet300", "kwargs": {"input_size": 8}}, "data": data}
    arch, record = recorded_model(saved)
    assert arch == {"name": "lenet300", "kwargs": {"input_size": 8}}
    assert record == {k: data[k] for k in ("name", "input_shape", "mean", "std", "num_classes")}  # as a .dsz records
    assert recorded_model({"format": FORMAT, "arch": None, "data": "digits"}) == (None, {"name": "digits"})
    assert recorded_model({"fc.weight": torch.zeros(2, 2)}) == (None, {})  # a plain state_dict records nothing
