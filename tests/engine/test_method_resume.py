"""Methods whose training hooks keep state (a schedule position, a meta network) resume exactly.

An interrupted `compress(..., out_dir=RUN)` restarted with `resume=True` must end with the same model as a
run that was never interrupted: the hook's state travels in last.pt (FBS's keep-ratio schedule, Co-Prune's
stage, Meta-Quant's meta network, its optimizer and LSTM memory), not only the weights.
"""
from __future__ import annotations

import signal

import pytest
import torch

import deepshrink
import deepshrink.engine
from deepshrink.engine import Hook, Trainer

TRAIN = {"epochs": 3, "lr": 0.01, "deterministic": True, "seed": 1}
CASES = {
    "fbs": {"method": "fbs", "params": {"keep_ratio": 0.5, "keep_ratio_start": 1.0, "schedule_fraction": 0.9,
                                        "calib_batches": 1}},
    "coprune": {"method": "coprune", "params": {"keep_ratio": 0.3, "stages": 2}},  # resumes mid-stage
    "metaquant": {"method": "metaquant", "params": {"quantizer": "bwn", "meta_net": "lstmfc"}},
}


class Interrupt(Hook):
    def on_epoch_start(self, trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt


class InterruptedTrainer(Trainer):
    def __init__(self, *args, hooks=(), **kwargs):
        super().__init__(*args, hooks=[*hooks, Interrupt()], **kwargs)


class CtrlCMidEpoch(Hook):
    """A SIGINT from inside the second of the third epoch's three steps, as a user's Ctrl-C arrives."""

    def after_step(self, trainer):
        if trainer.step == 2 * trainer.steps_per_epoch + 2:
            signal.raise_signal(signal.SIGINT)


class CtrlCTrainer(Trainer):
    def __init__(self, *args, hooks=(), **kwargs):
        super().__init__(*args, hooks=[*hooks, CtrlCMidEpoch()], **kwargs)


def _run(name: str, out_dir, resume: bool = False):
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    source = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    extra = {"source_model": source} if name == "coprune" else None
    return deepshrink.compress(model, {**CASES[name], "train": TRAIN}, train_data=data, val_data=data[:1],
                               out_dir=out_dir, resume=resume, extra=extra).model


@pytest.mark.parametrize("where", ["between epochs", "mid-epoch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_interrupted_then_resumed_method_ends_with_the_same_model(name, where, tmp_path, monkeypatch):
    straight = _run(name, tmp_path / "a")
    with monkeypatch.context() as patch:
        patch.setattr(deepshrink.engine, "Trainer", InterruptedTrainer if where == "between epochs" else CtrlCTrainer)
        with pytest.raises(KeyboardInterrupt):
            _run(name, tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and (saved["epoch_progress"] or {}).get("batches") == (2 if where == "mid-epoch" else None)
    resumed = _run(name, tmp_path / "b", resume=True)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after resuming"
