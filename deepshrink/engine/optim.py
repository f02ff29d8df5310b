"""Optimizers and per-iteration learning-rate schedules of the training loop.

Weight decay goes to conv/linear weights only (the "no decay on BN, bias and quantizer parameters"
convention of Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1 and of torchvision's
reference recipes); a hook's `param_groups` replaces this split entirely.

Schedules are functions of the global step, stepped once per iteration, so fractional epochs
(`epochs=0.5`) and `max_steps_per_epoch` work without special cases::

    optimizer = build_optimizer(model, TrainConfig(lr=0.1))
    scheduler = build_scheduler(optimizer, TrainConfig(schedule="cosine"), total_steps=1000)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UserError

DECAYED_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: `weight` of every Conv/Linear (decayed) and every other trainable parameter (not).

    Matching is by the module that directly owns the parameter, so subclasses (quantized convs)
    decay their weight but not extra parameters such as a learned step size.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_weight = name == "weight" and isinstance(module, DECAYED_MODULES)
            (decay if is_weight else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def groups_with_own_lr(model: nn.Module, weight_decay: float, params, lr: float, name: str) -> list[dict]:
    """`default_param_groups` with `params` moved into a group of their own: learning rate `lr`, no decay.

    For parameters that need another step size than the rest of the network (FBS's saliency
    predictors, TTQ's scales); the group's `lr` is its base rate, scaled by the schedule like the others.
    """
    own = list(params)
    moved = {id(p) for p in own}
    groups = default_param_groups(model, weight_decay)
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in moved]
    return groups + [{"params": own, "lr": float(lr), "weight_decay": 0.0, "name": name}]


def build_optimizer(model: nn.Module, config: TrainConfig, param_groups: list[dict] | None = None):
    """SGD (momentum, Nesterov), Adam or AdamW over `param_groups` (default: `default_param_groups`).

    Groups that do not set `lr` / `weight_decay` take `config.lr` / `config.weight_decay`.
    """
    groups = param_groups if param_groups is not None else default_param_groups(model, config.weight_decay)
    groups = [g for g in groups if len(list(g["params"])) > 0]
    if not groups:
        raise UserError("the model has no trainable parameter (every requires_grad is False)")
    if config.optimizer == "sgd":
        nesterov = bool(config.nesterov and config.momentum > 0)
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of each group's base lr at iteration `step` (0-based) for constant/step/cosine.

    cosine: 0.5 (1 + cos(pi t)) with t the fraction of post-warm-up training done
    (Loshchilov & Hutter 2017, SGDR, eq. 5 with eta_min = 0); step: gamma^(milestones passed);
    an optional linear warm-up over the first `config.warmup` fraction of the steps.
    """
    total = max(1, total_steps)
    warmup_steps = int(round(config.warmup * total))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        passed = sum(1 for m in config.milestones if step >= m * total)
        return config.gamma ** passed
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, config: TrainConfig, total_steps: int):
    """A scheduler stepped once per iteration over `total_steps` iterations.

    onecycle follows Smith & Topin 2019 ("Super-convergence") as torch's OneCycleLR implements it:
    warm up for `config.warmup` of training (0.3 if unset) from lr/25 to lr, then anneal to lr/25e4;
    each group peaks at its own lr.
    """
    total = max(1, int(total_steps))
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=config.warmup if config.warmup > 0 else 0.3,
            cycle_momentum=not (config.optimizer == "sgd" and config.momentum == 0))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))
