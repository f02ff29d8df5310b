"""Inference-form layers produced by every method's `convert`: an encoded weight, an optional
input quantizer, and a plain conv/linear on the decoded weight.

The decoded weight is cached in a buffer so inference costs what a float layer costs; the codes
are what `deepshrink.pack` writes. An input quantizer is any packable module (DoReFa/PACT/LSQ
activation quantizers, XNOR's binary input with its scaling map); it may define
`scale_output(x, y)` to rescale the layer's output (XNOR-Net's K * alpha).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_packable
from .encoded import EncodedWeight
from .packable import Packable


class _CompressedMixin(Packable):
    def _init_encoded(self, encoded: EncodedWeight, input_quant: nn.Module | None):
        self.encoded = encoded
        self.register_buffer("weight", encoded.dequantize(), persistent=True)
        self.input_quant = input_quant

    def encoded_tensors(self) -> dict[str, EncodedWeight]:
        return {"weight": self.encoded}

    def load_encoded(self, name: str, encoded: EncodedWeight) -> None:
        if name != "weight":
            super().load_encoded(name, encoded)
        if tuple(encoded.shape) != tuple(self.weight.shape):
            raise ValueError(f"encoded weight shape {encoded.shape} != layer shape {tuple(self.weight.shape)}")
        self.encoded = encoded
        self.weight = encoded.dequantize().to(self.weight.device)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quant is None else self.input_quant(x)

    def _scale_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = getattr(self.input_quant, "scale_output", None)
        return y if scale is None else scale(x, y)


@register_packable("compressed_conv2d")
class CompressedConv2d(_CompressedMixin, nn.Conv2d):
    """A Conv2d whose weight is an `EncodedWeight`; built by `CompressedConv2d.from_conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, encoded: EncodedWeight | None = None, input_quant=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        del self.weight  # a parameter in nn.Conv2d; here a buffer decoded from codes
        if encoded is None:  # placeholder until load_encoded (used by deepshrink.load)
            encoded = EncodedWeight("float", (out_channels, in_channels // groups, *self.kernel_size),
                                    params={"values": torch.zeros(out_channels, in_channels // groups,
                                                                  *self.kernel_size)})
        self._init_encoded(encoded, input_quant)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, encoded: EncodedWeight, input_quant=None) -> "CompressedConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, encoded, input_quant)
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        return layer.to(conv.weight.device)

    def pack_config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride), padding=list(self.padding),
                    dilation=list(self.dilation), groups=self.groups, bias=self.bias is not None)

    def forward(self, x):
        y = F.conv2d(self._quantize_input(x), self.weight, self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        return self._scale_output(x, y)


@register_packable("compressed_linear")
class CompressedLinear(_CompressedMixin, nn.Linear):
    """A Linear whose weight is an `EncodedWeight`; built by `CompressedLinear.from_linear`."""

    def __init__(self, in_features, out_features, bias=True, encoded: EncodedWeight | None = None,
                 input_quant=None):
        nn.Linear.__init__(self, in_features, out_features, bias)
        del self.weight
        if encoded is None:
            encoded = EncodedWeight("float", (out_features, in_features),
                                    params={"values": torch.zeros(out_features, in_features)})
        self._init_encoded(encoded, input_quant)

    @classmethod
    def from_linear(cls, linear: nn.Linear, encoded: EncodedWeight, input_quant=None) -> "CompressedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, encoded, input_quant)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer.to(linear.weight.device)

    def pack_config(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias is not None)

    def forward(self, x):
        y = F.linear(self._quantize_input(x), self.weight, self.bias)
        return self._scale_output(x, y)


def compress_layer(layer: nn.Module, encoded: EncodedWeight, input_quant=None) -> nn.Module:
    """The inference form of a Conv2d or Linear with the given encoded weight."""
    if isinstance(layer, nn.Conv2d):
        return CompressedConv2d.from_conv(layer, encoded, input_quant)
    if isinstance(layer, nn.Linear):
        return CompressedLinear.from_linear(layer, encoded, input_quant)
    raise TypeError(f"cannot compress a {type(layer).__name__}; only Conv2d and Linear")


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (e.g. 'layer1.0.conv1')."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@register_packable("identity")
class PackableIdentity(Packable, nn.Identity):
    """A module a method removed from the network (e.g. XNOR-Net's `drop_relu`), kept as a packable
    pass-through so that `deepshrink.load` rebuilds the compressed network, not the original one."""

    def pack_config(self) -> dict:
        return {}
