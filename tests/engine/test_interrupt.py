"""Ctrl-C in the middle of an epoch: last.pt holds the position, and resuming equals never stopping.

The interrupt is a real SIGINT sent from inside a training step (as a user's Ctrl-C arrives), so the
test also covers the holding of the signal until the step ends.
"""
from __future__ import annotations

import json
import signal

import pytest
import torch
from torch import nn

from deepshrink.data import DatasetMeta, TensorImageDataset, make_loader
from deepshrink.engine import Hook, Trainer
from deepshrink.engine.interrupt import InterruptGuard

CONFIG = {"epochs": 3, "lr": 0.05, "momentum": 0.9, "schedule": "cosine", "deterministic": True, "seed": 3}
STOP_EPOCH, STOP_STEP = 1, 2  # the third step of the second epoch (0-based)


class Interrupter(Hook):
    """Records every batch's labels; at (STOP_EPOCH, STOP_STEP) sends SIGINT, or raises KeyboardInterrupt
    itself (`raise_directly`), from inside after_step."""

    def __init__(self, armed: bool, raise_directly: bool = False):
        self.armed, self.raise_directly = armed, raise_directly
        self.labels: list[list[int]] = []

    def before_step(self, trainer, inputs, targets):
        self.labels.append(targets.tolist())

    def after_step(self, trainer):
        if self.armed and trainer.epoch == STOP_EPOCH and trainer.step == STOP_EPOCH * trainer.steps_per_epoch \
                + STOP_STEP + 1:
            self.armed = False
            if self.raise_directly:
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)


class CtrlCInValidation:
    """A validation loader that sends SIGINT after the first batch of its pass number `at` (1-based)."""

    def __init__(self, loader, at: int):
        self.loader, self.at, self.passes = loader, at, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        for index, batch in enumerate(self.loader):
            if self.passes == self.at and index == 1:
                signal.raise_signal(signal.SIGINT)
            yield batch


@pytest.fixture
def fit(make_net, make_loader_pair):
    """fit(kind, run_dir, hook, resume=None) -> the Trainer, after training the tiny net with dropout."""

    def run(kind, run_dir, hook, resume=None, ctrl_c_in_validation=None):
        layers = list(make_net(seed=0))  # dropout draws from the RNG: the checkpoint must carry its state
        net = nn.Sequential(*layers[:-1], nn.Dropout(0.3), layers[-1])
        train, val = make_loader_pair(batch_size=32, seed=5)  # any loader with set_epoch: batches drawn, dropped
        if kind == "make_loader":  # jumps to the step (resume_at)
            images = (train.inputs * 40 + 128).clamp(0, 255).to(torch.uint8)
            meta = DatasetMeta("toy", "train", tuple("abcd"), (0.5,), (0.25,), augment="cifar")
            train = make_loader(TensorImageDataset(images, train.labels, meta), 32, train=True, seed=5)
        if ctrl_c_in_validation is not None:
            val = CtrlCInValidation(val, ctrl_c_in_validation)
        trainer = Trainer(net, train, val, CONFIG, hooks=[hook], run_dir=run_dir, resume=resume, progress=False)
        trainer.fit()
        return trainer

    return run


@pytest.mark.parametrize("kind", ["make_loader", "set_epoch loader"])
def test_ctrl_c_mid_epoch_saves_the_step_and_resume_equals_an_uninterrupted_run(kind, fit, tmp_path, capsys):
    straight_hook = Interrupter(armed=False)
    straight = fit(kind, tmp_path / "straight", straight_hook)

    stopped_hook = Interrupter(armed=True)
    with pytest.raises(KeyboardInterrupt):
        fit(kind, tmp_path / "run", stopped_hook)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == STOP_EPOCH and saved["epoch_progress"]["batches"] == STOP_STEP + 1
    assert saved["step"] == STOP_EPOCH * straight.steps_per_epoch + STOP_STEP + 1
    assert f"saved epoch {STOP_EPOCH + 1} after step {STOP_STEP + 1}/6" in capsys.readouterr().err

    resumed_hook = Interrupter(armed=False)
    resumed = fit(kind, tmp_path / "run", resumed_hook, resume=tmp_path / "run" / "last.pt")
    assert stopped_hook.labels + resumed_hook.labels == straight_hook.labels  # the same batches, in order
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming mid-epoch"
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "straight")  # the split epoch's loss and accuracy too


def _metrics(run_dir):
    """metrics.jsonl without its timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_s")} for row in rows]


def test_a_keyboard_interrupt_inside_a_step_saves_nothing_half_made(fit, tmp_path, capsys):
    straight = fit("make_loader", tmp_path / "straight", Interrupter(armed=False))
    with pytest.raises(KeyboardInterrupt):  # raised, not signalled: the step's changes are half made
        fit("make_loader", tmp_path / "run", Interrupter(armed=True, raise_directly=True))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == STOP_EPOCH and saved["epoch_progress"] is None  # the end of epoch 1, as written
    assert "nothing saved" in capsys.readouterr().err
    resumed = fit("make_loader", tmp_path / "run", Interrupter(armed=False), resume=tmp_path / "run" / "last.pt")
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_guard_holds_sigint_until_the_critical_block_ends_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGINT)
    finished = False
    with InterruptGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.critical():
                signal.raise_signal(signal.SIGINT)
                finished = True  # reached: the signal waited for the block's end
        assert finished and not guard.torn
        with pytest.raises(KeyboardInterrupt):  # outside a critical block: at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_ctrl_c_during_validation_saves_the_trained_epoch_and_resume_scores_it(fit, tmp_path, capsys):
    straight = fit("make_loader", tmp_path / "straight", Interrupter(armed=False))
    with pytest.raises(KeyboardInterrupt):  # outside a step: raised at once, the epoch's training is kept
        fit("make_loader", tmp_path / "run", Interrupter(armed=False), ctrl_c_in_validation=2)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["epoch_progress"]["batches"] == 6
    assert "saved epoch 2 after step 6/6" in capsys.readouterr().err
    resumed = fit("make_loader", tmp_path / "run", Interrupter(armed=False), resume=tmp_path / "run" / "last.pt")
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "straight")
