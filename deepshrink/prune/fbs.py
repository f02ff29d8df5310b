"""FBS: Feature Boosting and Suppression, dynamic channel pruning (Gao et al., ICLR 2019).

Every selected conv that a BatchNorm follows (`convN` -> `bnN` in a block) gets a saliency predictor
g(x) = ReLU(phi s(x) + rho) and keeps, per sample, exactly ceil(d * C) output channels (see fbs_gate.py). Fine-tuning from a dense model goes through the one training loop with `FBSHook`:

- the L1 penalty lambda * sum_l mean_n ||g_l(x_n)||_1 as `extra_loss`;
- the keep-ratio schedule d: `keep_ratio_start` -> `keep_ratio` linearly over the first
  `schedule_fraction` of the steps (the paper fine-tunes while shrinking d gradually).

Before training, each predictor is initialised by least squares on `calib_batches` batches so that g
starts near 1 and ranks channels by their activity (fbs_gate.fit_predictor; the paper trains phi, rho
from scratch, which needs a longer budget).

`convert` turns every residual block whose convs are all gated into an `FBSBlock`, which really skips
the suppressed channels per sample (fbs_infer.py). Choices for CIFAR/ImageNet ResNets:
- the stem conv is not gated (first layer, skipped by `keep_first_last`): its input is the RGB image,
  whose 3 channel means say little about which filters matter, and it costs ~1% of ResNet-20's MACs;
- shortcut projections are not gated: the residual sum needs every channel of the block output.

Recipe (deepshrink/recipes/fbs.yaml)::

    method: fbs
    params: {keep_ratio: 0.5, keep_ratio_start: 1.0, l1_penalty: 1.0e-5}
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..engine.hooks import Hook
from ..errors import UserError
from ..methods import Method
from ..nn import get_module, set_module
from ..registry import register_method
from . import planned_steps
from .fbs_gate import FBSGatedConv, calibrate_predictors, gated_convs
from .fbs_infer import FBSBlock


@dataclass
class FBSConfig:
    """keep_ratio: d, the fraction of output channels kept per sample, in (0, 1] (per layer allowed).
    keep_ratio_start: d at the first step of fine-tuning (>= keep_ratio).
    schedule_fraction: fraction of the steps over which d goes from keep_ratio_start to keep_ratio.
    l1_penalty: lambda of the saliency L1 term, on the per-sample L1 norm of every layer's saliencies.
    calib_batches: batches used to initialise the predictors by least squares (0: phi = 0, rho = 1).
    predictor_lr_scale: the predictors' learning rate relative to train.lr (their gradient sums a whole
        feature map per gate, so at the network's lr one step can swing every gate at once).
    """

    keep_ratio: float = 0.5
    keep_ratio_start: float = 1.0
    schedule_fraction: float = 0.5
    l1_penalty: float = 1e-5
    calib_batches: int = 8
    predictor_lr_scale: float = 0.1

    def __post_init__(self):
        if not 0 < self.keep_ratio <= 1:
            raise UserError(f"fbs: keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if not self.keep_ratio <= self.keep_ratio_start <= 1:
            raise UserError(f"fbs: keep_ratio_start must be in [keep_ratio, 1], got {self.keep_ratio_start}")
        if not 0 <= self.schedule_fraction <= 1:
            raise UserError(f"fbs: schedule_fraction must be in [0, 1], got {self.schedule_fraction}")
        if self.l1_penalty < 0:
            raise UserError(f"fbs: l1_penalty must be >= 0, got {self.l1_penalty}")
        if not self.predictor_lr_scale > 0:
            raise UserError(f"fbs: predictor_lr_scale must be > 0, got {self.predictor_lr_scale}")
        if self.calib_batches < 0:
            raise UserError(f"fbs: calib_batches must be >= 0, got {self.calib_batches}")


def scheduled_keep_ratio(start: float, end: float, progress: float, fraction: float) -> float:
    """d at training progress in [0, 1]: linear from `start` to `end` over the first `fraction`."""
    if fraction <= 0 or progress >= fraction:
        return end
    return start + (end - start) * progress / fraction


class FBSHook(Hook):
    """Keep-ratio schedule (before every step) and the saliency L1 penalty (FBS Sec. 3)."""

    def __init__(self, targets: dict[FBSGatedConv, tuple[float, float]], l1_penalty: float,
                 schedule_fraction: float, total_steps: int, predictor_lr_scale: float = 1.0):
        self.targets = targets  # gate -> (keep_ratio_start, keep_ratio)
        self.predictor_lr_scale = predictor_lr_scale
        self.l1_penalty = l1_penalty
        self.schedule_fraction = schedule_fraction
        self.total_steps = max(1, total_steps)
        self.steps = 0

    def param_groups(self, trainer, model):
        """The default groups, with the saliency predictors (phi, rho) in their own, slower group."""
        from ..engine.optim import default_param_groups

        predictor = {id(p) for gate in self.targets for p in gate.predictor.parameters()}
        groups = default_param_groups(model, trainer.config.weight_decay)
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in predictor]
        groups.append({"params": [p for gate in self.targets for p in gate.predictor.parameters()],
                       "lr": trainer.config.lr * self.predictor_lr_scale, "weight_decay": 0.0,
                       "name": "fbs_predictors"})
        return groups

    def before_step(self, trainer, inputs, targets):
        progress = self.steps / self.total_steps
        for gate, (start, end) in self.targets.items():
            gate.keep_ratio = scheduled_keep_ratio(start, end, progress, self.schedule_fraction)
        self.steps += 1
        return None

    def extra_loss(self, trainer, inputs, outputs, targets):
        if self.l1_penalty == 0:
            return None
        norms = [g.last_saliency.abs().sum(1).mean() for g in self.targets if g.last_saliency is not None]
        return self.l1_penalty * sum(norms) if norms else None

    def on_train_end(self, trainer):
        for gate, (_, end) in self.targets.items():
            gate.keep_ratio = end


def _bn_name(conv_name: str) -> str | None:
    """'layer1.0.conv2' -> 'layer1.0.bn2' (the naming every ResNet block in deepshrink.models uses)."""
    parent, _, leaf = conv_name.rpartition(".")
    if not leaf.startswith("conv") or not leaf[4:].isdigit():
        return None
    return f"{parent}.bn{leaf[4:]}" if parent else f"bn{leaf[4:]}"


def apply_fbs(model: nn.Module, keep_ratios: dict[str, float]) -> dict[str, FBSGatedConv]:
    """Replace each named conv and its BN by an `FBSGatedConv` (the BN module becomes Identity).

    Convs without a `bnN` sibling (shortcut projections, the classifier) are left dense.
    """
    gates = {}
    for name, ratio in keep_ratios.items():
        bn_name = _bn_name(name)
        conv = get_module(model, name)
        try:
            bn = get_module(model, bn_name) if bn_name else None
        except AttributeError:
            bn = None
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            continue
        gate = FBSGatedConv(conv, bn, ratio)
        set_module(model, name, gate)
        set_module(model, bn_name, nn.Identity())
        gates[name] = gate
    if not gates:
        raise UserError("fbs: no selected conv is followed by a BatchNorm named like it (convN -> bnN); "
                        "FBS gates the convs of ResNet-style blocks")
    return gates


def convert_fbs(model: nn.Module) -> nn.Module:
    """Replace every block whose convs are all gated by an `FBSBlock` that skips suppressed channels."""
    blocks = [(name, m) for name, m in model.named_modules()
              if isinstance(getattr(m, "conv1", None), FBSGatedConv)
              and all(isinstance(getattr(m, f"conv{i}"), FBSGatedConv)
                      for i in range(1, 4) if hasattr(m, f"conv{i}"))]
    for name, block in blocks:
        set_module(model, name, FBSBlock.from_block(block))
    return model


@register_method("fbs", FBSConfig)
class FBS(Method):
    """Handler: gate the selected convs, calibrate predictors, fine-tune with `FBSHook`, convert."""

    kind = "dynamic"

    def compress(self, model: nn.Module, ctx) -> nn.Module:
        ratios = {name: cfg.keep_ratio for name, cfg in self.layer_configs.items()}
        gates = apply_fbs(model, ratios)
        if ctx.device is not None:
            model.to(ctx.device)
        if self.config.calib_batches and ctx.train_data is not None:
            calibrate_predictors(model, ctx.train_data, self.config.calib_batches, ctx.device)
        targets = {gate: (max(self.layer_configs[name].keep_ratio_start, self.layer_configs[name].keep_ratio),
                          self.layer_configs[name].keep_ratio) for name, gate in gates.items()}
        if ctx.train.epochs > 0:
            hook = FBSHook(targets, self.config.l1_penalty, self.config.schedule_fraction,
                           planned_steps(ctx), self.config.predictor_lr_scale)
            ctx.fit(model, [hook])
        for gate, (_, end) in targets.items():
            gate.keep_ratio = end
        return model

    def convert(self, model: nn.Module) -> nn.Module:
        return convert_fbs(model.eval())


__all__ = ["FBS", "FBSBlock", "FBSConfig", "FBSGatedConv", "FBSHook", "apply_fbs", "convert_fbs",
           "gated_convs", "scheduled_keep_ratio"]
