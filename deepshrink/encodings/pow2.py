"""Powers-of-two weights (L-DNQ, INQ): codes in -(L-1)/2 .. (L-1)/2 for L = `levels` (odd, >= 3);
W = 0 for code 0, sign(c) * alpha * 2^(|c| - 1) otherwise, i.e. L-DNQ's {0, ±a, ±2a, ±4a, ...}.

ceil(log2 L) bits per code in the file (3 levels: 1.6 with the packer's `ternary_base3`). Integer form
q = sign(c) 2^(|c| - 1): the levels are integers times alpha. With 3 levels, {0, +-alpha}, the bit kernels
run it as one ternary plane times alpha.
"""
from __future__ import annotations

import math

import torch

from .base import CodedEncoding
from .checks import check_int, fail
from .registry import register_encoding
from .weight import IntegerForm, SignPlane, bcast, per_channel


@register_encoding
class Pow2(CodedEncoding):
    name = "pow2"
    param_names = ("alpha",)
    per_filter_params = ("alpha",)

    def validate(self, weight):
        if weight.levels is None or weight.levels < 3 or weight.levels % 2 == 0:
            raise ValueError(f"pow2 encoding needs an odd levels >= 3, got {weight.levels}")
        weight.bits = math.ceil(math.log2(weight.levels))

    def code_range(self, weight):
        half = (weight.levels - 1) // 2
        return -half, half

    def dequantize(self, weight):
        codes = weight.codes.reshape(weight.shape).long()
        magnitude = torch.pow(2.0, (codes.abs() - 1).clamp(min=0).float())
        return bcast(weight.params["alpha"], weight.shape) * torch.sign(codes).float() * magnitude

    def integer_form(self, weight):
        codes = weight.codes.reshape(weight.shape).long()
        magnitude = torch.ones_like(codes) << (codes.abs() - 1).clamp(min=0)
        alpha = weight.params["alpha"].float()
        return IntegerForm(torch.sign(codes) * magnitude, torch.zeros(1, dtype=torch.long), alpha, alpha)

    def sign_planes(self, weight):
        if weight.levels != 3:  # more levels than {0, +-alpha}: not one ternary plane
            return None
        alpha = per_channel(weight.params["alpha"], weight.shape[0])
        return [SignPlane(weight.codes.reshape(weight.shape), True, alpha)]

    def read_fields(self, meta, what):
        levels = check_int(meta.get("levels"), what + " levels", 3, (1 << 16) - 1)
        if levels % 2 == 0:
            fail(what, f"pow2 levels must be odd, found {levels}")
        return {**super().read_fields(meta, what), "levels": levels}
