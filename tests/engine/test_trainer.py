"""Trainer budget and loss options: fractional epochs, step caps, label smoothing, channels-last, AMP fallback."""
import pytest
import torch

from deepshrink.config import TrainConfig
from deepshrink.engine import Hook, Trainer
from deepshrink.errors import UserError


class CountSteps(Hook):
    def __init__(self):
        self.per_epoch = {}

    def after_step(self, trainer):
        self.per_epoch[trainer.epoch] = self.per_epoch.get(trainer.epoch, 0) + 1


@pytest.mark.parametrize("epochs, cap, expected", [(0.5, None, {0: 3}), (1.5, None, {0: 6, 1: 3}),
                                                   (2, 2, {0: 2, 1: 2})])
def test_fractional_epochs_and_step_cap(make_net, make_loader_pair, epochs, cap, expected):
    counter = CountSteps()  # the toy loader has 6 batches per epoch
    trainer = Trainer(make_net(), make_loader_pair()[0], config=TrainConfig(epochs=epochs, max_steps_per_epoch=cap),
                      hooks=[counter])
    final = trainer.fit()
    assert counter.per_epoch == expected and final["steps"] == sum(expected.values())
    assert trainer.scheduler.last_epoch == trainer.total_steps  # the schedule spans exactly the steps run


class RecordLoss(Hook):
    def extra_loss(self, trainer, inputs, outputs, targets):
        self.outputs, self.targets = outputs.detach(), targets


def test_label_smoothing_uses_the_smoothed_cross_entropy(make_net, make_loader_pair):
    recorder = RecordLoss()
    config = TrainConfig(epochs=1, max_steps_per_epoch=1, label_smoothing=0.2)
    final = Trainer(make_net(), make_loader_pair()[0], config=config, hooks=[recorder]).fit()
    log_probs = recorder.outputs.log_softmax(1)  # (B, classes)
    nll = -log_probs.gather(1, recorder.targets[:, None]).squeeze(1)
    expected = (0.8 * nll - 0.2 * log_probs.mean(1)).mean()  # Szegedy et al. 2016, sec. 7
    assert final["train_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_channels_last_and_amp_request_on_cpu(make_net, make_loader_pair):
    trainer = Trainer(make_net(), *make_loader_pair(), {"epochs": 1, "channels_last": True, "amp": True})
    final = trainer.fit()
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not trainer.amp and trainer.scaler is None  # AMP is CUDA-only: float32 on CPU
    assert final["val_top1"] >= 0 and final["images_per_s"] > 0


def test_empty_data_and_divergence_are_user_errors(make_net, make_loader_pair):
    with pytest.raises(UserError, match="empty"):
        Trainer(make_net(), [], config=TrainConfig(epochs=1))
    with pytest.raises(UserError, match="diverged"):
        Trainer(make_net(), make_loader_pair()[0], config=TrainConfig(epochs=1, lr=1e30, schedule="constant")).fit()


def test_plain_progress_lines_when_not_a_terminal(make_net, make_loader_pair, capsys):
    config = TrainConfig(epochs=1, log_every=3)
    Trainer(make_net(), *make_loader_pair(), config, progress=False).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    assert [line.split()[3] for line in lines] == ["3/6", "6/6"]
    assert all("img/s" in line and "eta" in line for line in lines)


def test_tensorboard_events_when_installed_else_a_clear_message(make_net, make_loader_pair, tmp_path, capsys):
    import importlib.util

    config = TrainConfig(epochs=1, max_steps_per_epoch=1, tensorboard=True)
    Trainer(make_net(), *make_loader_pair(), config, run_dir=tmp_path).fit()
    if importlib.util.find_spec("tensorboard") is not None:
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    else:
        assert "pip install tensorboard" in capsys.readouterr().err and not (tmp_path / "tb").exists()
