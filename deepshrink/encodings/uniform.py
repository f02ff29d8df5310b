"""Uniform weights (DoReFa, LQ-Nets' uniform case, PTQ): codes in 0 .. 2^bits - 1, W = (codes - zero_point) * scale.

`bits` in 1..16 per code in the file. Integer form q = c with its zero point, or 2c and 2z at half the
scale for a half-integer zero point (DoReFa's grid centre); none for any other zero point.
"""
from __future__ import annotations

import torch

from .base import CodedEncoding
from .checks import check_int
from .registry import register_encoding
from .weight import IntegerForm, bcast


@register_encoding
class Uniform(CodedEncoding):
    name = "uniform"
    param_names = ("scale", "zero_point")
    per_filter_params = ("scale", "zero_point")

    def validate(self, weight):
        if not (weight.bits and 1 <= weight.bits <= 16):
            raise ValueError(f"uniform encoding needs bits in 1..16, got {weight.bits}")

    def code_range(self, weight):
        return 0, 2**weight.bits - 1

    def dequantize(self, weight):
        codes = weight.codes.reshape(weight.shape)
        return (codes.float() - bcast(weight.params["zero_point"], weight.shape)) * bcast(weight.params["scale"],
                                                                                           weight.shape)

    def integer_form(self, weight):
        codes = weight.codes.reshape(weight.shape).long()
        zero_point, scale = weight.params["zero_point"].double(), weight.params["scale"].float()
        for factor in (1, 2):  # (c - z) s == (2c - 2z)(s / 2) exactly in float
            if torch.equal(zero_point * factor, (zero_point * factor).round()):
                return IntegerForm(codes * factor, (zero_point * factor).long(), scale / factor, scale / factor)
        return None

    def no_integer_form(self, weight):
        return "uniform weights are integer codes times a scale only where the zero point is a multiple of 1/2"

    def read_fields(self, meta, what):
        return {**super().read_fields(meta, what), "bits": check_int(meta.get("bits"), what + " bits", 1, 16)}

