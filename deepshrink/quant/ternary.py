"""TWN (Li & Liu 2016) and TTQ (Zhu et al. 2017): ternary weights.

TWN: W ~ alpha * {-1, 0, 1}, Delta = 0.7 E|W|, alpha = mean |W_i| over |W_i| > Delta (Sec. 3.2).
TTQ: learned per-layer W_p, W_n initialised from the weights, Delta = t max|W| (Eq. 6-9), scale
gradients the sums over their index sets, latent gradients scaled by W_p, 1, W_n.

Example::

    result = deepshrink.compress(model, "ttq", train_data=train, overrides=["threshold=0.05"])
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """threshold: t in Delta = t * max|W| (0.05 in the paper)."""

    threshold: float = 0.05

    def __post_init__(self):
        check_range("ttq", "threshold", self.threshold, 0.0, 1.0)


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
