"""Binary weights (BinaryConnect / BWN / XNOR-Net): codes in {0, 1}, W = scale * (2 * codes - 1).

One bit per weight in the file; `scale` per layer (1) or per filter (out,). Integer form q = 2c - 1;
for the bit kernels one binary plane (the codes as they are) times the scale.
"""
from __future__ import annotations

import torch

from .base import CodedEncoding
from .registry import register_encoding
from .weight import IntegerForm, SignPlane, bcast, per_channel


@register_encoding
class Binary(CodedEncoding):
    name = "binary"
    param_names = ("scale",)
    per_filter_params = ("scale",)

    def code_range(self, weight):
        return 0, 1

    def code_width(self, weight):
        return 1

    def dequantize(self, weight):
        codes = weight.codes.reshape(weight.shape)
        return bcast(weight.params["scale"], weight.shape) * (2.0 * codes.float() - 1.0)

    def integer_form(self, weight):
        scale = weight.params["scale"].float()
        codes = weight.codes.reshape(weight.shape).long()
        return IntegerForm(2 * codes - 1, torch.zeros(1, dtype=torch.long), scale, scale)

    def sign_planes(self, weight):
        scale = per_channel(weight.params["scale"], weight.shape[0])
        return [SignPlane(weight.codes.reshape(weight.shape), False, scale)]
