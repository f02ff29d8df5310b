"""TWN (Li & Liu 2016) and TTQ (Zhu et al. 2017): ternary weights.

TWN: W ~ alpha * {-1, 0, 1}, Delta = 0.7 E|W|, alpha = mean |W_i| over |W_i| > Delta (Sec. 3.2).
TTQ: learned per-layer W_p, W_n initialised from the weights, Delta = t max|W| (Eq. 6-9), scale
gradients the sums over their index sets, latent gradients scaled by W_p, 1, W_n.

TTQ's `scale_lr` (default off: one learning rate for every parameter, as the paper describes) gives
W_p and W_n a learning rate of their own. Their gradients are sums over thousands of weights (0.1-1.7
per batch on the shared ResNet-20, against scales of 0.03-0.2), so SGD at the rate that suits the
latent weights (0.01, as TWN) moves a scale by 10-30% per step; with a rate of its own (2e-5) TTQ
trains by SGD, and ends more accurate than under Adam (the `ttq` recipe, the method's default; measured on the
shared ResNet-20: benchmarks/results/qat_cifar10.jsonl, `ttq` rows tagged `sgd-t0.1-kd` against `t0.1-kd`).

Example::

    result = deepshrink.compress(model, "ttq", train_data=train, overrides=["threshold=0.05"])
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.hooks import Hook
from ..engine.optim import groups_with_own_lr
from ..registry import register_method
from .qat import QATConfig, QATMethod, check_range
from .weight_quant import TernaryWeight, TTQWeight


@dataclass
class TWNConfig(QATConfig):
    """threshold_factor: Delta = threshold_factor * E|W| (0.7 in the paper); per_channel: per filter."""

    threshold_factor: float = 0.7
    per_channel: bool = False

    def __post_init__(self):
        check_range("twn", "threshold_factor", self.threshold_factor, 0.0, 2.0)


@dataclass
class TTQConfig(QATConfig):
    """threshold: t in Delta = t * max|W| (0.05 in the paper); scale_lr: learning rate of W_p and W_n
    (None: the recipe's train.lr, as in the paper)."""

    threshold: float = 0.05
    scale_lr: float | None = None

    def __post_init__(self):
        check_range("ttq", "threshold", self.threshold, 0.0, 1.0)
        if self.scale_lr is not None:
            check_range("ttq", "scale_lr", self.scale_lr, 0.0, 10.0)


@register_method("twn", TWNConfig)
class TWN(QATMethod):
    """Ternary Weight Networks."""

    def weight_quantizer(self, cfg, layer):
        return TernaryWeight(cfg.threshold_factor, cfg.per_channel)


@register_method("ttq", TTQConfig)
class TTQ(QATMethod):
    """Trained Ternary Quantization."""

    def weight_quantizer(self, cfg, layer):
        return TTQWeight(cfg.threshold)

    def hooks(self):
        return [] if self.config.scale_lr is None else [ScaleLearningRate(self.config.scale_lr)]


class ScaleLearningRate(Hook):
    """Puts every TTQ scale (W_p, W_n) in an optimizer group with learning rate `lr`, no weight decay."""

    def __init__(self, lr: float):
        self.lr = lr

    def param_groups(self, trainer, model):
        scales = [p for m in model.modules() if isinstance(m, TTQWeight) for p in (m.w_p, m.w_n)]
        return groups_with_own_lr(model, trainer.config.weight_decay, scales, self.lr, "ttq_scales")
