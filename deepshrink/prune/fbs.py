"""FBS: Feature Boosting and Suppression, dynamic channel pruning (Gao et al., ICLR 2019).

What is gated: every selected Conv2d (groups=1) of any CNN, except residual shortcut projections. A conv
gets a saliency predictor g(x) = ReLU(phi s(x) + rho) and keeps, per sample, exactly ceil(d * C) output
channels (see fbs_gate.py); the gate multiplies
- the BatchNorm output, pi(x) * BN(conv(x)) as in the paper, when a BatchNorm2d follows the conv (found
  by the ResNet naming rule convN -> bnN, else as the module registered right after the conv in the same
  parent, with the conv's channel count; see `following_norm`);
- otherwise the conv output itself, pi(x) * conv(x), bias included (LeNet-5, your own convs), so a
  suppressed channel is exactly 0.
Selected layers FBS cannot gate (Linear, grouped convs, shortcut projections) stay dense.

Fine-tuning from a dense model goes through the one training loop with `FBSHook`:

- the L1 penalty lambda * sum_l mean_n ||g_l(x_n)||_1 as `extra_loss`;
- the keep-ratio schedule d: `keep_ratio_start` -> `keep_ratio` linearly over the first
  `schedule_fraction` of the steps (the paper fine-tunes while shrinking d gradually).

Before training, each predictor is initialised by least squares on `calib_batches` batches so that g
starts near 1 and ranks channels by their activity (fbs_gate.fit_predictor; the paper trains phi, rho
from scratch, which needs a longer budget).

`convert` turns every residual block whose convs are all gated into an `FBSBlock`, which skips the
suppressed channels per sample and the next conv's reads of them (fbs_infer.py); every other gated conv
becomes an `FBSConv`, which computes only the kept output channels per sample (fbs_conv.py). Both are
packable. Choices for CIFAR/ImageNet ResNets:
- the stem conv is not gated (first layer, skipped by `keep_first_last`): its input is the RGB image,
  whose 3 channel means say little about which filters matter, and it costs ~1% of ResNet-20's MACs;
- shortcut projections are not gated: the residual sum needs every channel of the block output.

Recipes: `fbs` (deepshrink/recipes/fbs.yaml, 30 epochs with distillation from the dense model, the default by
validation), `fbs-paper` (the same schedule on the paper's loss alone) and `fbs-quick` (2 epochs)::

    method: fbs
    params: {keep_ratio: 0.5, keep_ratio_start: 1.0, schedule_fraction: 0.2, l1_penalty: 1.0e-5}
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
from .fbs_conv import FBSConv, FoldedNorm
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
        from ..engine.optim import groups_with_own_lr

        predictors = [p for gate in self.targets for p in gate.predictor.parameters()]
        return groups_with_own_lr(model, trainer.config.weight_decay, predictors,
                                  trainer.config.lr * self.predictor_lr_scale, "fbs_predictors")

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

    def state_dict(self) -> dict:
        return {"steps": self.steps}  # the schedule's position: a resumed run must not restart it at d = 1

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


# Residual shortcut projections stay dense: the residual sum needs every channel of the block output.
SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})


def following_norm(model: nn.Module, conv_name: str) -> str | None:
    """Name of the BatchNorm2d that normalises conv `conv_name`'s output, or None.

    Looked up in the conv's parent, first by the ResNet naming rule (`layer1.0.conv2` -> `layer1.0.bn2`),
    then by module order (the module registered right after the conv, as in nn.Sequential(conv, BN,
    ReLU)); either must be a BatchNorm2d with the conv's output channels.
    """
    parent_name, _, leaf = conv_name.rpartition(".")
    children = dict(model.get_submodule(parent_name).named_children())
    names = list(children)
    candidates = [f"bn{leaf[4:]}"] if leaf.startswith("conv") and leaf[4:].isdigit() else []
    if leaf in names and names.index(leaf) + 1 < len(names):
        candidates.append(names[names.index(leaf) + 1])
    for candidate in candidates:
        norm = children.get(candidate)
        if isinstance(norm, nn.BatchNorm2d) and norm.num_features == children[leaf].out_channels:
            return f"{parent_name}.{candidate}" if parent_name else candidate
    return None


def gate_plan(model: nn.Module, name: str) -> tuple[nn.Conv2d, str | None] | None:
    """(conv, name of its BatchNorm or None) if FBS can gate layer `name`, else None.

    Gateable: an ordinary Conv2d (groups=1, zero padding) outside a residual shortcut
    (`SHORTCUT_NAMES`) whose BatchNorm, if it has one, keeps running statistics (to fold them).
    """
    conv = get_module(model, name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if SHORTCUT_NAMES & set(name.split(".")[:-1]):
        return None
    norm = following_norm(model, name)
    if norm is not None and not get_module(model, norm).track_running_stats:
        return None
    return conv, norm


def apply_fbs(model: nn.Module, keep_ratios: dict[str, float]) -> dict[str, FBSGatedConv]:
    """Replace each named conv (and its BatchNorm, if one follows) by an `FBSGatedConv`.

    The BatchNorm's slot gets a `FoldedNorm` (an identity). Layers FBS cannot gate (Linear, grouped
    convs, shortcut projections; see `gate_plan`) stay dense. Example::

        gates = apply_fbs(lenet, {"conv2": 0.5})   # conv2 -> FBSGatedConv(conv2, None, 0.5)
    """
    gates = {}
    for name, ratio in keep_ratios.items():
        plan = gate_plan(model, name)
        if plan is None:
            continue
        conv, norm_name = plan
        gate = FBSGatedConv(conv, get_module(model, norm_name) if norm_name else None, ratio)
        set_module(model, name, gate)
        if norm_name:
            set_module(model, norm_name, FoldedNorm())
        gates[name] = gate
    if not gates:
        raise UserError(f"fbs: none of the selected layers ({', '.join(keep_ratios) or 'none'}) is a conv FBS "
                        "can gate (a Conv2d with groups=1 outside residual shortcuts); select at least one "
                        "(recipe `layers`, or keep_first_last: false for a one-conv network)")
    return gates


def _gated_residual_block(module: nn.Module) -> bool:
    """A ResNet Basic/Bottleneck block (it has `downsample`) whose conv1..convN are all gated."""
    convs = [getattr(module, f"conv{i}", None) for i in range(1, 4)]
    convs = convs[: convs.index(None)] if None in convs else convs
    return (hasattr(module, "downsample") and bool(convs)
            and all(isinstance(conv, FBSGatedConv) for conv in convs))


def convert_fbs(model: nn.Module) -> nn.Module:
    """Inference form: every residual block whose convs are all gated -> `FBSBlock`; every other gated
    conv -> `FBSConv`. Both compute only the channels each sample keeps and are packable."""
    blocks = [(name, m) for name, m in model.named_modules() if name and _gated_residual_block(m)]
    for name, block in blocks:
        set_module(model, name, FBSBlock.from_block(block))
    for name, gate in [(n, m) for n, m in model.named_modules() if n and isinstance(m, FBSGatedConv)]:
        set_module(model, name, FBSConv.from_gate(gate))
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


__all__ = ["FBS", "FBSBlock", "FBSConfig", "FBSConv", "FBSGatedConv", "FBSHook", "FoldedNorm", "apply_fbs",
           "convert_fbs", "following_norm", "gate_plan", "gated_convs", "scheduled_keep_ratio"]
