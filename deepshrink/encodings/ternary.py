"""Ternary weights (TWN / TTQ): codes in {-1, 0, 1}, W = pos_scale * [codes == 1] - neg_scale * [codes == -1].

Two bits per weight in the file (1.6 with the packer's `ternary_base3`); TTQ's two scales may differ.
Integer form q = c with the two scales; for the bit kernels one ternary plane (TWN) or, where the
scales differ (TTQ), a plane of the +1 positions times pos_scale and one of the -1 positions times -neg_scale.
"""
from __future__ import annotations

import torch

from .base import CodedEncoding
from .registry import register_encoding
from .weight import IntegerForm, SignPlane, bcast, per_channel


@register_encoding
class Ternary(CodedEncoding):
    name = "ternary"
    param_names = ("pos_scale", "neg_scale")
    per_filter_params = ("pos_scale", "neg_scale")

    def code_range(self, weight):
        return -1, 1

    def code_width(self, weight):
        return 2

    def dequantize(self, weight):
        codes = weight.codes.reshape(weight.shape)
        pos = bcast(weight.params["pos_scale"], weight.shape)
        neg = bcast(weight.params["neg_scale"], weight.shape)
        return pos * (codes == 1).float() - neg * (codes == -1).float()

    def integer_form(self, weight):
        codes = weight.codes.reshape(weight.shape).long()
        return IntegerForm(codes, torch.zeros(1, dtype=torch.long), weight.params["pos_scale"].float(),
                           weight.params["neg_scale"].float())

    def sign_planes(self, weight):
        codes, out = weight.codes.reshape(weight.shape), weight.shape[0]
        pos, neg = per_channel(weight.params["pos_scale"], out), per_channel(weight.params["neg_scale"], out)
        if torch.equal(pos, neg):  # TWN: one plane, w = alpha * code
            return [SignPlane(codes, True, pos)]
        # TTQ: the +1 and -1 positions counted apart, y = pos * S(+) - neg * S(-)
        return [SignPlane((codes == 1).to(torch.int8), True, pos), SignPlane((codes == -1).to(torch.int8), True, -neg)]
