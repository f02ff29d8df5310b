"""BWN and XNOR-Net (Rastegari et al. 2016): binary weights alpha * sign(W); XNOR-Net adds binary inputs.

BWN (Eq. 4): alpha = mean |W| per output filter (per layer with `per_channel: false`), the sign's
gradient clipped to |W| <= 1. XNOR-Net (Sec. 3.2): the same weights, inputs sign(BN(I)) with the
STE 1{|I| <= 1}, and the binary conv's output scaled by K = A * k (see `XNORActivation`, which also
documents how the paper's BN -> sign -> conv -> pool order is applied to an existing network).

Example::

    result = deepshrink.compress(model, "bwn", train_data=train, val_data=test)
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..registry import register_method
from .act_quant import XNORActivation
from .qat import QATConfig, QATMethod
from .weight_quant import BinaryWeight


@dataclass
class BWNConfig(QATConfig):
    """per_channel: one alpha per output filter (the paper) rather than one per layer."""

    per_channel: bool = True


@dataclass
class XNORConfig(BWNConfig):
    """act_bn: put a BatchNorm before each binary activation (the paper's BN -> sign -> conv order)."""

    act_bn: bool = True


@register_method("bwn", BWNConfig)
class BWN(QATMethod):
    """Binary-Weight-Networks: 1-bit weights, full-precision activations."""

    def weight_quantizer(self, cfg, layer):
        return BinaryWeight(cfg.per_channel)


@register_method("xnor", XNORConfig)
class XNOR(BWN):
    """XNOR-Net: 1-bit weights and 1-bit inputs with the scaling map K."""

    def input_quantizer(self, cfg, layer):
        if isinstance(layer, nn.Conv2d):
            return XNORActivation(layer.in_channels, layer.kernel_size, layer.stride, layer.padding,
                                  layer.dilation, conv=True, bn=cfg.act_bn)
        return XNORActivation(layer.in_features, conv=False, bn=cfg.act_bn)
