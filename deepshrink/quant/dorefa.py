"""DoReFa-Net (Zhou et al. 2016): k-bit weights, activations and gradients, bits independent.

weights (Eq. 7-9, tanh normalisation; k = 1: E|W| sign(W)), activations quantize_k(clip(x, 0, 1))
on each quantized layer's input (`act_range` rescales the clip for fine-tuning a float network), and the gradient flowing back through each quantized layer's
output quantized by Eq. 12 (max scaling + uniform noise). 32 bits = that part stays in float.

Example::

    result = deepshrink.compress(model, "dorefa-w4a4g8", train_data=train, val_data=test)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from ..registry import register_method
from ..errors import UserError
from .act_quant import DoReFaActivation, ScaledDoReFaActivation
from .qat import FULL_PRECISION, QATConfig, QATMethod, check_bits
from .weight_quant import DoReFaWeight


@dataclass
class DoReFaConfig(QATConfig):
    """weight_bits (1..16), act_bits (1..16), grad_bits (1..16); 32 turns that quantizer off.

    act_range: the activations' clipping range [0, s]. 1.0 is the paper's [0, 1]; a number s > 0 fixes
    another; "calibrate" sets s per layer from the calibration batch (99.9th percentile) and keeps it
    fixed: for fine-tuning a float network, see `ScaledDoReFaActivation` (a documented deviation).
    """

    weight_bits: int = 4
    act_bits: int = 4
    grad_bits: int = 32
    act_range: float | str = 1.0

    def __post_init__(self):
        for name in ("weight_bits", "act_bits", "grad_bits"):
            check_bits("dorefa", name, getattr(self, name), 1, 16)
        if self.act_range != "calibrate" and (isinstance(self.act_range, (bool, str)) or not self.act_range > 0):
            raise UserError(f"dorefa: act_range must be a number > 0 (1.0 = the paper's [0, 1]) or 'calibrate'; "
                            f"got {self.act_range!r}")


@register_method("dorefa", DoReFaConfig)
class DoReFa(QATMethod):
    """DoReFa-Net quantization-aware training."""

    def weight_quantizer(self, cfg, layer):
        return DoReFaWeight(cfg.weight_bits)

    def input_quantizer(self, cfg, layer):
        if cfg.act_bits == FULL_PRECISION:
            return None
        if cfg.act_range == 1.0:
            return DoReFaActivation(cfg.act_bits)
        return ScaledDoReFaActivation(cfg.act_bits, None if cfg.act_range == "calibrate" else cfg.act_range)

    def grad_bits(self, cfg):
        return cfg.grad_bits

    def prepare(self, model):
        if any(cfg.act_range == "calibrate" and cfg.act_bits != FULL_PRECISION
               for cfg in self.layer_configs.values()) \
                and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # the calibrated clip [0, s] follows the float activations; without a BatchNorm to re-normalise
            # the quantized layers' outputs, their scale compounds layer after layer and training diverges
            warnings.warn("dorefa: act_range 'calibrate' assumes a BatchNorm after each quantized layer and "
                          "this model has none; training may diverge. Set params.act_range=1.0 (the paper's "
                          "[0, 1]) for a network without BatchNorm", UserWarning, stacklevel=2)
        return super().prepare(model)
