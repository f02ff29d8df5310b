"""Optimizer parameter groups and per-iteration learning-rate schedules."""
import math

import pytest
import torch
from torch import nn

from deepshrink.config import TrainConfig
from deepshrink.engine.optim import build_optimizer, build_scheduler, default_param_groups


class StepSizeConv(nn.Conv2d):
    """A quantized-conv stand-in: its extra parameter must not be decayed."""

    def __init__(self):
        super().__init__(1, 2, 3)
        self.step_size = nn.Parameter(torch.ones(1))


def test_weight_decay_reaches_conv_and_linear_weights_only():
    model = nn.Sequential(StepSizeConv(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    groups = {g["name"]: g for g in default_param_groups(model, 5e-4)}
    decayed = {id(p) for p in groups["decay"]["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["no_decay"]["weight_decay"] == 0.0
    others = {id(p) for p in groups["no_decay"]["params"]}
    assert others == {id(model[0].bias), id(model[0].step_size), id(model[1].weight), id(model[1].bias),
                      id(model[3].bias)}


def test_frozen_parameters_are_left_out():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert [p for g in optimizer.param_groups for p in g["params"]] == [model.weight]


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_optimizer_kinds(name, cls):
    optimizer = build_optimizer(nn.Linear(3, 2), TrainConfig(optimizer=name, lr=0.3))
    assert isinstance(optimizer, cls) and optimizer.param_groups[0]["lr"] == 0.3
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9


def _lrs(config, total):
    optimizer = build_optimizer(nn.Linear(2, 2), config)
    scheduler = build_scheduler(optimizer, config, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_follows_the_sgdr_formula():
    lrs = _lrs(TrainConfig(lr=0.1, schedule="cosine"), 10)
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 10)) for t in range(10)])


def test_step_schedule_drops_by_gamma_at_milestones():
    lrs = _lrs(TrainConfig(lr=1.0, schedule="step", milestones=(0.5, 0.75), gamma=0.1), 8)
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_with_linear_warmup():
    lrs = _lrs(TrainConfig(lr=0.4, schedule="constant", warmup=0.5), 8)
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4])


def test_onecycle_peaks_at_lr_after_warmup_then_anneals():
    lrs = _lrs(TrainConfig(lr=0.2, schedule="onecycle", warmup=0.25), 100)
    assert lrs[0] == pytest.approx(0.2 / 25)
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 24
    assert lrs[-1] < 1e-4
