"""Extension points of the one training loop. Compression methods plug in here, never by copying it.

The Trainer calls, in this order, for every hook in its list:

    on_train_start(trainer)                      once, after the optimizer exists
    on_epoch_start(trainer, epoch)
      before_step(trainer, inputs, targets)      may return replacement (inputs, targets)
      extra_loss(trainer, inputs, outputs, targets) -> Tensor | None   added to the task loss
      after_backward(trainer)                    gradients exist, optimizer not stepped yet
      after_step(trainer)                        optimizer and scheduler stepped
    on_epoch_end(trainer, epoch, metrics)        metrics: dict of this epoch's train/val figures
    on_train_end(trainer)

`param_groups(trainer, model)` lets a hook decide which parameters the optimizer gets (return a list
of torch param-group dicts, or None to keep the default). Only the first hook returning non-None wins.
`trainer` exposes .model, .optimizer, .scheduler, .config (TrainConfig), .epoch, .step, .device.

A hook that keeps state of its own across epochs (a schedule position, masks held outside the model)
returns it from `state_dict()` (tensors and primitives only); checkpoints store it and `--resume`
hands it back through `load_state_dict(state)`, after on_train_start. A run resumed from a checkpoint
that Ctrl-C wrote in the middle of an epoch does not call on_epoch_start for that epoch again (the
interrupted run did): what it sets up must live in the model or in the hook's state_dict.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .evaluate import logits_of


class Hook:
    """Base class with no-op implementations of every extension point."""

    def param_groups(self, trainer, model):
        return None

    def on_train_start(self, trainer):
        pass

    def on_epoch_start(self, trainer, epoch: int):
        pass

    def before_step(self, trainer, inputs, targets):
        return None

    def extra_loss(self, trainer, inputs, outputs, targets):
        return None

    def after_backward(self, trainer):
        pass

    def after_step(self, trainer):
        pass

    def on_epoch_end(self, trainer, epoch: int, metrics: dict):
        pass

    def on_train_end(self, trainer):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Distillation(Hook):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"):
    adds `weight` * T^2 * KL(softmax(t / T) || softmax(s / T)) to the task loss on every training batch,
    t the frozen `teacher`'s logits (eval mode, no gradient), s the student's, T the `temperature`.
    The T^2 factor keeps the gradient scale independent of T, as in the paper (Sec. 2).

    `compress` builds one when the recipe's `train.distill` > 0, the teacher being the model as handed to
    it (the uncompressed network when fine-tuning a trained checkpoint).
    """

    def __init__(self, teacher, weight: float, temperature: float = 1.0):
        self.teacher, self.weight, self.temperature = teacher.eval(), float(weight), float(temperature)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def on_train_start(self, trainer):
        self.teacher.to(trainer.device)

    def extra_loss(self, trainer, inputs, outputs, targets):
        with torch.no_grad():
            teacher = logits_of(self.teacher(inputs)).float()
        return self.weight * kd_loss(logits_of(outputs).float(), teacher, self.temperature)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al. 2015)."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                            reduction="batchmean")
