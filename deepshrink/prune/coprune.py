"""Co-Prune: cooperative cross-domain pruning (Chen, Wang, Pan, "Cooperative Pruning in Cross-Domain
Deep Neural Network Compression", IJCAI 2019).

A model trained on a source domain (plenty of data) is pruned for a target domain that has little
labelled data. The magnitude the target weights reach after a few steps on little data is a noisy
importance signal, so the mask of layer l mixes source and target magnitudes:

    score_l = alpha * |W_src| + (1 - alpha) * |W_tgt|           (the cooperative criterion)
    M_l     = 1 for the round(k_l * n_l) largest scores, 0 elsewhere (k_l: the layer's keep ratio)

The forward pass uses W_tgt * M; gradients pass straight through the mask (dL/dW_tgt = dL/d(W M)),
so pruned weights keep learning and may come back when the mask is recomputed. Training runs in
`stages` equal parts of the budget; at the start of stage s the mask is recomputed with

    alpha_s = alpha_start + (alpha_end - alpha_start) * s / (stages - 1)

(alpha decreasing: trust the source first, the adapted target weights later) and, with `ramp_keep`,
a keep ratio going linearly from 1 to k_l at the last stage (gradual pruning).

Inputs (`deepshrink.compress(model, "coprune", train_data=target_loader, extra={...})`):
- `model`: the source-trained model; its weights initialise W_tgt and, unless `extra` says otherwise,
  give W_src (copied before any training).
- `train_data`: the labelled target-domain data.
- `extra["source_model"]` (optional): an nn.Module with the same layer names whose weights are W_src
  (e.g. when `model` was already fine-tuned on the target).

Per-layer keep ratios come from the recipe's layer overrides (`layers: [{pattern: "layer3.*",
params: {keep_ratio: 0.1}}]`). `convert` gives CompressedConv2d/Linear with "sparse" EncodedWeights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.hooks import Hook
from ..errors import UserError
from ..methods import Method
from ..nn import EncodedWeight, compress_layer, get_module, set_module
from ..registry import register_method
from . import planned_steps


@dataclass
class CoPruneConfig:
    """keep_ratio: fraction of the layer's weights kept at the end, in (0, 1] (per layer allowed).
    alpha_start / alpha_end: the source weight of the score in the first and last stage, in [0, 1].
    stages: number of equal training stages (masks are recomputed at the start of each).
    ramp_keep: keep ratio goes 1 -> keep_ratio over the stages (else keep_ratio from the start).
    """

    keep_ratio: float = 0.3
    alpha_start: float = 1.0
    alpha_end: float = 0.0
    stages: int = 4
    ramp_keep: bool = True

    def __post_init__(self):
        if not 0 < self.keep_ratio <= 1:
            raise UserError(f"coprune: keep_ratio must be in (0, 1], got {self.keep_ratio}")
        for name in ("alpha_start", "alpha_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"coprune: {name} must be in [0, 1], got {getattr(self, name)}")
        if int(self.stages) != self.stages or self.stages < 1:
            raise UserError(f"coprune: stages must be an integer >= 1, got {self.stages}")


def alpha_schedule(alpha_start: float, alpha_end: float, stages: int) -> list[float]:
    """alpha of each stage: linear from alpha_start (stage 0) to alpha_end (last stage)."""
    if stages == 1:
        return [alpha_end]
    return [alpha_start + (alpha_end - alpha_start) * s / (stages - 1) for s in range(stages)]


def keep_schedule(keep_ratio: float, stages: int, ramp: bool) -> list[float]:
    """Keep ratio of each stage: 1 - (1 - k) (s + 1) / stages with `ramp`, else k throughout."""
    if not ramp:
        return [keep_ratio] * stages
    return [1 - (1 - keep_ratio) * (s + 1) / stages for s in range(stages)]


def coprune_mask(source: torch.Tensor, target: torch.Tensor, alpha: float, keep_ratio: float) -> torch.Tensor:
    """Bool mask keeping the round(keep_ratio * n) largest alpha |W_src| + (1 - alpha) |W_tgt|."""
    score = alpha * source.abs() + (1 - alpha) * target.abs()
    n_keep = max(1, round(keep_ratio * score.numel()))
    index = score.flatten().topk(n_keep).indices
    return torch.zeros(score.numel(), dtype=torch.bool, device=score.device).index_fill_(0, index, True) \
        .reshape(score.shape)


def masked_ste(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """W * M in the forward pass, identity gradient to W in the backward pass (straight through)."""
    return weight + (weight * mask - weight).detach()


class _MaskedMixin:
    """Holds `mask` (bool, W's shape) and `source_weight` (W_src); forward uses masked_ste(W, M)."""

    def _init_mask(self, source_weight: torch.Tensor, keep_ratio: float) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.register_buffer("source_weight", source_weight.detach().clone().to(self.weight.device))
        self.keep_ratio = keep_ratio

    def update_mask(self, alpha: float, keep_ratio: float) -> None:
        self.mask.copy_(coprune_mask(self.source_weight, self.weight.detach(), alpha, keep_ratio))

    def masked_weight(self) -> torch.Tensor:
        return masked_ste(self.weight, self.mask)

    def encoded(self) -> EncodedWeight:
        values = (self.weight.detach() * self.mask).cpu()
        inner = EncodedWeight("float", values.shape, params={"values": values})
        return EncodedWeight("sparse", values.shape, mask=self.mask.cpu(), inner=inner)


class CoPruneConv2d(_MaskedMixin, nn.Conv2d):
    """A Conv2d trained through its Co-Prune mask."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, source_weight: torch.Tensor, keep_ratio: float) -> "CoPruneConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        layer.load_state_dict(conv.state_dict())
        layer.to(conv.weight.device)._init_mask(source_weight, keep_ratio)
        return layer

    def forward(self, x):
        return self._conv_forward(x, self.masked_weight(), self.bias)


class CoPruneLinear(_MaskedMixin, nn.Linear):
    """A Linear trained through its Co-Prune mask."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, source_weight: torch.Tensor, keep_ratio: float) -> "CoPruneLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.load_state_dict(linear.state_dict())
        layer.to(linear.weight.device)._init_mask(source_weight, keep_ratio)
        return layer

    def forward(self, x):
        return F.linear(x, self.masked_weight(), self.bias)


class CoPruneHook(Hook):
    """Recomputes every mask at the start of each stage with that stage's alpha and keep ratio."""

    def __init__(self, layers: dict[str, _MaskedMixin], alphas: list[float], ramp_keep: bool,
                 total_steps: int):
        self.layers = layers
        self.alphas = alphas
        self.ramp_keep = ramp_keep
        self.total_steps = max(1, total_steps)
        self.steps = 0
        self.stage = -1

    def stage_of(self, step: int) -> int:
        return min(len(self.alphas) - 1, step * len(self.alphas) // self.total_steps)

    def apply_stage(self, stage: int) -> None:
        self.stage = stage
        for layer in self.layers.values():
            keep = keep_schedule(layer.keep_ratio, len(self.alphas), self.ramp_keep)[stage]
            layer.update_mask(self.alphas[stage], keep)

    def before_step(self, trainer, inputs, targets):
        stage = self.stage_of(self.steps)
        if stage != self.stage:
            self.apply_stage(stage)
        self.steps += 1
        return None

    def on_train_end(self, trainer):
        self.apply_stage(len(self.alphas) - 1)  # the final mask, also when training stopped early

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        # the masks are model buffers (in last.pt already): mark the stage of the last step done as applied,
        # so a resumed run recomputes them only where a new stage starts, not mid-stage
        self.steps = int(state["steps"])
        self.stage = self.stage_of(self.steps - 1) if self.steps > 0 else -1


@register_method("coprune", CoPruneConfig)
class CoPrune(Method):
    """Handler: wrap selected layers with masks, train on the target data stage by stage, convert."""

    kind = "prune"

    def compress(self, model: nn.Module, ctx) -> nn.Module:
        source = ctx.extra.get("source_model", None)
        layers = {}
        for name, cfg in self.layer_configs.items():
            layer = get_module(model, name)
            source_weight = get_module(source, name).weight if source is not None else layer.weight
            if source_weight.shape != layer.weight.shape:
                raise UserError(f"coprune: extra['source_model'] layer {name!r} has shape "
                                f"{tuple(source_weight.shape)}, the model has {tuple(layer.weight.shape)}")
            if isinstance(layer, nn.Conv2d):
                wrapped = CoPruneConv2d.from_conv(layer, source_weight, cfg.keep_ratio)
            else:
                wrapped = CoPruneLinear.from_linear(layer, source_weight, cfg.keep_ratio)
            set_module(model, name, wrapped)
            layers[name] = wrapped
        alphas = alpha_schedule(self.config.alpha_start, self.config.alpha_end, int(self.config.stages))
        hook = CoPruneHook(layers, alphas, self.config.ramp_keep, planned_steps(ctx))
        if ctx.train.epochs > 0:
            ctx.fit(model, [hook])
        else:
            hook.on_train_end(None)  # one-shot pruning with the last stage's alpha
        return model

    def convert(self, model: nn.Module) -> nn.Module:
        for name, module in list(model.named_modules()):
            if isinstance(module, _MaskedMixin):  # a Conv2d/Linear subclass: geometry and bias carry over
                set_module(model, name, compress_layer(module, module.encoded()))
        return model


__all__ = ["CoPrune", "CoPruneConfig", "CoPruneConv2d", "CoPruneHook", "CoPruneLinear", "alpha_schedule",
           "coprune_mask", "keep_schedule", "masked_ste"]
