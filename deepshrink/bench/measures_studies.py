"""Row measures of the method studies (FBS, LSQ's initialisation, Meta-Quant's convergence), registered by name.

- `macs_executed`: MACs per image the row's model actually executes on real validation images (FBS gates
  channels per image, so its MACs depend on the input), beside the float base's.
- `batch1_latency`: batch-1, one-thread latency (median ms) of the row's model as a module and compiled for
  deployment (`fbs_infer.script_for_latency`: TorchScript + freeze) beside the float base plain, with its
  BatchNorm folded into its convs, and compiled the same way; every model called in turn in one loop, so
  load on a shared machine hits all alike.
- `train_bn_top1`: top-1 on the validation images with BatchNorm in train mode (batch statistics, as during
  fine-tuning), in batches of 500 in a fixed shuffled order: what quantizers cost before any training.
- `val_curve`: validation top-1 after every training epoch, from the row's run log (`train/metrics.jsonl`).

Example::

    measures: [macs_executed, batch1_latency]      # a suite's, or a row's
"""
from __future__ import annotations

import copy
import json
import time

import torch
from torch import nn

from .measures import MeasureContext, register_measure

LATENCY_ROUNDS = 2000  # timed calls per model (after 20 warm-up calls each)
MACS_IMAGES = 256  # validation images MACs are averaged over
TRAIN_BN_BATCH = 500


def first_images(batches, count: int) -> torch.Tensor:
    """The first `count` images of an iterable of (inputs, labels) batches: (count, C, H, W)."""
    taken, total = [], 0
    for batch in batches:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        taken.append(inputs[: count - total])
        total += taken[-1].shape[0]
        if total >= count:
            break
    return torch.cat(taken)


@register_measure("macs_executed", figures={"macs_executed": ("MACs run/image", "{:,.0f}"),
                                            "macs_executed_ratio": ("MACs fewer x", "{:.2f}")})
def macs_executed(ctx: MeasureContext) -> dict:
    """MACs per image the row's model executes on the first 256 validation images (input-dependent layers
    such as FBS's gated convs count what they ran), and the float base's over its own."""
    from ..analysis import profile

    images = first_images(ctx.val_batches(), MACS_IMAGES)
    row = profile(ctx.model.eval(), inputs=images).totals["macs"]
    dense = profile(ctx.base, inputs=images).totals["macs"]
    return {"macs_executed": row, "macs_executed_dense": dense, "macs_executed_ratio": round(dense / row, 3),
            "macs_images": int(images.shape[0])}


def fold_all_bn(model: nn.Module) -> nn.Module:
    """A copy of a network with every conv -> BatchNorm pair (`convN`/`bnN`, or a `Sequential(conv, bn)`
    shortcut) folded into one conv with a bias; the BatchNorm becomes Identity."""
    from ..prune.fbs_infer import fold_bn

    model = copy.deepcopy(model).eval()
    pairs = []
    for module in model.modules():
        for child, sub in module.named_children():
            if not isinstance(sub, nn.Conv2d):
                continue
            bn_name = child.replace("conv", "bn") if child.startswith("conv") else None
            if child == "0" and isinstance(module, nn.Sequential) and len(module) > 1:
                bn_name = "1"
            bn = getattr(module, bn_name, None) if bn_name else None
            if isinstance(bn, nn.BatchNorm2d):
                pairs.append((module, child, bn_name, sub, bn))
    with torch.no_grad():
        for module, child, bn_name, conv, bn in pairs:
            weight, bias = fold_bn(conv, bn)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            setattr(module, child, fused)
            setattr(module, bn_name, nn.Identity())
    return model


def interleaved_latency(models: dict[str, nn.Module], images: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model, called in turn on the same image, round after round."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(20):
            for model in models.values():
                model(images[i % len(images)].unsqueeze(0))
        for i in range(rounds):
            image = images[i % len(images)].unsqueeze(0)  # (1, C, H, W)
            for name, model in models.items():
                start = time.perf_counter()
                model(image)
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


def _speedup_cell(record: dict) -> str:
    speed = record.get("latency_speedup") or {}
    return "—" if "vs_dense" not in speed else f"{speed['vs_dense']:.2f}x ({speed['vs_dense_compiled']:.2f}x)"


def _latency_cell(record: dict) -> str:
    ms = record.get("batch1_latency_ms") or {}
    return "—" if "row_eager" not in ms else f"{ms['row_eager']:.2f} ({ms['row_compiled']:.2f})"


@register_measure("batch1_latency", figures={"batch1_latency_ms": ("batch-1 ms (compiled)", _latency_cell),
                                             "latency_speedup": ("x faster than dense (compiled dense)",
                                                                 _speedup_cell)})
def batch1_latency(ctx: MeasureContext) -> dict:
    """Batch-1, one-thread latency (median ms of 2,000 calls) of the row's model as a module (`row_eager`) and
    compiled for deployment (`row_compiled`: TorchScript + freeze), beside the float base plain (`dense`),
    BN-folded (`dense_bn_folded`) and compiled the same way (`dense_compiled`), interleaved call by call;
    speedups of the compiled row model against each."""
    from ..prune.fbs_infer import script_for_latency

    images = first_images(ctx.val_batches(), MACS_IMAGES)
    dense, row = ctx.base.eval(), ctx.model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {"dense": dense, "dense_bn_folded": fold_all_bn(dense),
                  "dense_compiled": script_for_latency(copy.deepcopy(dense)),
                  "row_eager": row, "row_compiled": script_for_latency(copy.deepcopy(row))}
        ms = interleaved_latency(models, images, LATENCY_ROUNDS)
    finally:
        torch.set_num_threads(threads)
    compiled = ms["row_compiled"]
    return {"batch1_latency_ms": {k: round(v, 3) for k, v in ms.items()},
            "latency_speedup": {"vs_dense": round(ms["dense"] / compiled, 3),
                                "vs_dense_bn_folded": round(ms["dense_bn_folded"] / compiled, 3),
                                "vs_dense_compiled": round(ms["dense_compiled"] / compiled, 3),
                                "eager_vs_dense": round(ms["dense"] / ms["row_eager"], 3)},
            "latency_threads": 1, "latency_rounds": LATENCY_ROUNDS}


def shuffled_batches(batches, batch_size: int, seed: int = 0) -> list:
    """The images and labels of `batches` in a fixed random order, in batches of `batch_size`: a data set
    listed class by class would otherwise give train-mode BatchNorm one-class batches."""
    pairs = list(batches)
    inputs, labels = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return [(inputs[order[i:i + batch_size]], labels[order[i:i + batch_size]])
            for i in range(0, len(labels), batch_size)]


@torch.no_grad()
def train_bn_accuracy(model: nn.Module, batches) -> float:
    """Top-1 (%) of a copy of `model` in train mode (BatchNorm normalising by each batch's statistics);
    the model itself, its running statistics included, is left unchanged."""
    model = copy.deepcopy(model).train()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return round(100.0 * correct / sum(len(y) for _, y in batches), 2)


@register_measure("train_bn_top1", figures={"train_bn_top1": ("val top-1, train-mode BN", "{:.2f}")})
def train_bn_top1(ctx: MeasureContext) -> dict:
    """Validation top-1 with BatchNorm in train mode (batch statistics, as in fine-tuning), in batches of 500 in
    a fixed shuffled order: how far quantizers as initialised (no training) move a network, without the
    running statistics that no longer fit its quantized weights."""
    batches = shuffled_batches(ctx.val_batches(), TRAIN_BN_BATCH)
    return {"train_bn_top1": train_bn_accuracy(ctx.model, batches),
            "train_bn_images": sum(len(y) for _, y in batches)}


def _curve_cell(record: dict) -> str:
    curve = record.get("val_top1_per_epoch")
    return "—" if not curve else " → ".join(f"{v:.1f}" for v in curve)


@register_measure("val_curve", figures={"val_top1_per_epoch": ("val top-1 by epoch", _curve_cell)})
def val_curve(ctx: MeasureContext) -> dict:
    """Validation top-1 after every training epoch (convergence), from the row's run log
    (`train/metrics.jsonl`); nothing for a row that did not train."""
    path = ctx.row_dir / "train" / "metrics.jsonl"
    if not path.is_file():
        return {}
    epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"val_top1_per_epoch": [round(e["val_top1"], 2) for e in epochs if e.get("val_top1") is not None]}
