"""DoReFa-Net (Zhou et al. 2016): k-bit weights, activations and gradients, bits independent.

weights (Eq. 7-9, tanh normalisation; k = 1: E|W| sign(W)), activations quantize_k(clip(x, 0, 1))
on each quantized layer's input, and the gradient flowing back through each quantized layer's
output quantized by Eq. 12 (max scaling + uniform noise). 32 bits = that part stays in float.

Example::

    result = deepshrink.compress(model, "dorefa-w4a4g8", train_data=train, val_data=test)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_method
from .act_quant import DoReFaActivation
from .qat import FULL_PRECISION, QATConfig, QATMethod, check_bits
from .weight_quant import DoReFaWeight


@dataclass
class DoReFaConfig(QATConfig):
    """weight_bits (1..16), act_bits (1..16), grad_bits (1..16); 32 turns that quantizer off."""

    weight_bits: int = 4
    act_bits: int = 4
    grad_bits: int = 32

    def __post_init__(self):
        for name in ("weight_bits", "act_bits", "grad_bits"):
            check_bits("dorefa", name, getattr(self, name), 1, 16)


@register_method("dorefa", DoReFaConfig)
class DoReFa(QATMethod):
    """DoReFa-Net quantization-aware training."""

    def weight_quantizer(self, cfg, layer):
        return DoReFaWeight(cfg.weight_bits)

    def input_quantizer(self, cfg, layer):
        return None if cfg.act_bits == FULL_PRECISION else DoReFaActivation(cfg.act_bits)

    def grad_bits(self, cfg):
        return cfg.grad_bits
