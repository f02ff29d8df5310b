"""Short fine-tuning by distillation on the calibration data, shared by PQ's per-layer centroid tuning
(Stock et al. 2020, Sec. 3.3) and L-DNQ's cascade soft update (Xu et al. 2019, Sec. 3.4).

The student is trained to reproduce the teacher's (the original network's) outputs on the same batches:
`loss="kl"` is Hinton's KL(teacher || student) of the softmax outputs, `loss="mse"` the squared error
of the logits. Only `params` are updated; BatchNorm stays in eval mode (statistics are not touched).

Example::

    teacher_outputs = outputs_of(teacher, batches)
    distill(student, batches, teacher_outputs, [codebook], steps=20, lr=1e-3)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.hooks import kd_loss


def outputs_of(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's outputs on every batch (no grad, eval mode)."""
    model.eval()
    with torch.no_grad():
        return [model(inputs) for inputs in batches]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "kl":
        return kd_loss(student, teacher)
    return F.mse_loss(student, teacher)


def distill(model: nn.Module, batches: list[torch.Tensor], targets: list[torch.Tensor], params,
            steps: int, lr: float, loss: str = "kl") -> list[float]:
    """`steps` Adam steps on `params`, cycling over the batches; returns the loss of each step."""
    params = list(params)
    if steps <= 0 or not params:
        return []
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:  # no gradient work for what is not trained
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    model.eval()
    history = []
    try:
        for step in range(steps):
            index = step % len(batches)
            value = distillation_loss(model(batches[index]), targets[index], loss)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            history.append(value.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return history
