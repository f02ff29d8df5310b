"""Quantized training layers: a Conv2d/Linear with a weight quantizer, an optional input-activation
quantizer and optional k-bit gradient quantization of its output (DoReFa-Net).

forward:  y = op(input_quant(x), weight_quant(W)) [* input_quant.scale_output]  -> quantize_gradient(y)

`to_compressed()` gives the inference form (deepshrink.nn.CompressedConv2d/Linear) whose encoded
weight decodes to exactly `weight_quant(W)` in eval mode, with the same input quantizer module.

Example::

    q = QConv2d.from_float(conv, BinaryWeight(), DoReFaActivation(2))
    y = q(x)
    inference_layer = q.to_compressed()
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import compress_layer
from .primitives import quantize_gradient
from .weight_quant import WeightQuantizer


@torch.no_grad()
def _copy_float(qlayer: nn.Module, layer: nn.Module) -> None:
    qlayer.weight.copy_(layer.weight)
    if layer.bias is not None:
        qlayer.bias.copy_(layer.bias)


class _QuantLayer:
    """Shared forward and conversion of QConv2d and QLinear."""

    weight_quant: WeightQuantizer
    input_quant: nn.Module | None
    grad_bits: int

    def _setup(self, weight_quant: WeightQuantizer, input_quant: nn.Module | None, grad_bits: int):
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.grad_bits = int(grad_bits)
        self.weight_bits = int(weight_quant.bits)
        self.act_bits = int(getattr(input_quant, "bits", 32))

    def _quant_forward(self, x, op):
        x_q = x if self.input_quant is None else self.input_quant(x)
        y = op(x_q, self.weight_quant(self.weight))
        scale = getattr(self.input_quant, "scale_output", None)
        if scale is not None:
            y = scale(x, y)
        return quantize_gradient(y, self.grad_bits)

    def quantized_weight(self):
        """The weight the forward pass uses (eval mode: what `to_compressed` encodes)."""
        return self.weight_quant(self.weight)

    def to_compressed(self) -> nn.Module:
        """Inference form: codes + scales reproducing the eval-mode quantized weight."""
        layer = compress_layer(self, self.weight_quant.encode(self.weight), self.input_quant)
        layer.weight_bits, layer.act_bits = self.weight_bits, self.act_bits
        return layer


class QConv2d(_QuantLayer, nn.Conv2d):
    """Conv2d trained with quantized weights (and optionally inputs/gradients)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, weight_quant=None, input_quant=None, grad_bits: int = 32):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._setup(weight_quant or WeightQuantizer(), input_quant, grad_bits)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant, input_quant=None, grad_bits: int = 32) -> "QConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, weight_quant, input_quant, grad_bits)
        _copy_float(layer, conv)
        return layer.to(conv.weight.device)

    def forward(self, x):
        return self._quant_forward(x, lambda inp, w: self._conv_forward(inp, w, self.bias))


class QLinear(_QuantLayer, nn.Linear):
    """Linear trained with quantized weights (and optionally inputs/gradients)."""

    def __init__(self, in_features, out_features, bias=True, weight_quant=None, input_quant=None,
                 grad_bits: int = 32):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._setup(weight_quant or WeightQuantizer(), input_quant, grad_bits)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant, input_quant=None, grad_bits: int = 32) -> "QLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_quant,
                    input_quant, grad_bits)
        _copy_float(layer, linear)
        return layer.to(linear.weight.device)

    def forward(self, x):
        return self._quant_forward(x, lambda inp, w: F.linear(inp, w, self.bias))


def quantize_layer(layer: nn.Module, weight_quant, input_quant=None, grad_bits: int = 32) -> nn.Module:
    """The quantized training form of a Conv2d or Linear (weights copied, quantizer initialised from them)."""
    if isinstance(layer, nn.Conv2d):
        qlayer = QConv2d.from_float(layer, weight_quant, input_quant, grad_bits)
    elif isinstance(layer, nn.Linear):
        qlayer = QLinear.from_float(layer, weight_quant, input_quant, grad_bits)
    else:
        raise TypeError(f"cannot quantize a {type(layer).__name__}; only Conv2d and Linear")
    qlayer.weight_quant.initialize(qlayer.weight.detach())
    return qlayer
