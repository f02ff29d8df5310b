"""Evaluation: top-1 / top-5 accuracy (percent) and mean cross-entropy of a classifier."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..progress import Progress
from . import distributed


def model_device(model: nn.Module, default="cpu") -> torch.device:
    """The device of the model's first parameter or buffer (`default` for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device(default)


def logits_of(outputs) -> torch.Tensor:
    """The class scores of a forward result: the tensor itself, or the first element of a tuple/list."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the k highest scores, for each k (k clamped to #classes)."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices  # (N, max_k)
    hits = top.eq(targets.view(-1, 1))  # (N, max_k)
    return [int(hits[:, :min(k, max_k)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, data, device=None, task: str = "evaluate") -> dict:
    """Top-1 and top-5 accuracy (percent), mean cross-entropy loss and sample count of `model` on `data`.

    `data` is any iterable of (float inputs, int64 labels). The model is put in eval mode (and left
    there); `device` defaults to the model's own device. Top-5 counts a hit within the
    min(5, num_classes) highest scores. A loader split across torchrun ranks (`make_loader(...,
    rank=, world_size=)`, `train=False`) is scored shard by shard and the counts are summed over the
    ranks, so every rank must call `evaluate` and every rank gets the metrics of the whole set.
    Progress is reported under the name `task` (deepshrink.progress: a bar on a terminal).

    Example::

        metrics = evaluate(model, make_loader(get_dataset("cifar10", "test"), 500, train=False))
        metrics["top1"], metrics["top5"], metrics["loss"], metrics["n"]
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    total = len(data) if hasattr(data, "__len__") else None
    with Progress(task, total, "batch", enabled=distributed.is_main_process()) as progress:
        for inputs, targets in data:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = logits_of(model(inputs)).float()
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            c1, c5 = topk_correct(logits, targets, (1, 5))
            correct1 += c1
            correct5 += c5
            n += int(targets.numel())
            progress.update()
    if getattr(data, "world_size", 1) > 1 and distributed.is_distributed():
        totals = torch.tensor([n, correct1, correct5, loss_sum], dtype=torch.float64)
        distributed.all_reduce_sum(totals)
        n, correct1, correct5, loss_sum = int(totals[0]), int(totals[1]), int(totals[2]), float(totals[3])
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "loss": float("nan"), "n": 0}
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": n}
