"""How an integer encoding's weight is built in an exported ONNX graph: DequantizeLinear of its integer form.

W = scale * (q - zero_point) (`EncodedWeight.integer_form`) becomes an integer initialiser q feeding
`DequantizeLinear(q, scale, zero_point, axis=0)`, the weight side of ONNX's QDQ format; different
positive and negative scales (TTQ) become W = pos * Relu(q - z) - neg * Relu(z - q). q is uint8 where
every value is >= 0, else int8; beyond 8 bits there is no such form here (the weight exports as float).
deepshrink.packing.onnx_export patches each compressed layer to call the builder during export.
"""
from __future__ import annotations

from typing import Callable

import torch


class IntegerWeight(torch.autograd.Function):
    """W = scale * (q - zero_point); with `two_scales`, pos * Relu(q - z) - neg * Relu(z - q) (scale = 1)."""

    @staticmethod
    def forward(ctx, q, scale, zero_point, pos, neg, param_shape: tuple, two_scales: bool):
        centred = (q.float() - zero_point.float().reshape(param_shape)) * scale.reshape(param_shape)
        return centred.clamp(min=0) * pos - (-centred).clamp(min=0) * neg if two_scales else centred

    @staticmethod
    def symbolic(g, q, scale, zero_point, pos, neg, param_shape, two_scales):
        centred = g.op("DequantizeLinear", q, scale, zero_point, axis_i=0)
        if not two_scales:
            return centred
        positive = g.op("Mul", g.op("Relu", centred), pos)
        return g.op("Sub", positive, g.op("Mul", g.op("Relu", g.op("Neg", centred)), neg))


def integer_weight(encoded) -> Callable[[], torch.Tensor] | None:
    """A builder of `encoded`'s weight through `IntegerWeight`, for an integer form within 8 bits; else None."""
    form = encoded.integer_form()
    if form is None:
        return None
    shape, out = tuple(encoded.shape), encoded.shape[0]
    zero, q = form.zero_point, form.q
    low, high = int(torch.minimum(q.min(), zero.min())), int(torch.maximum(q.max(), zero.max()))
    # unsigned codes with their zero point (ORT's usual weight form) where all are >= 0, else signed
    dtype = torch.uint8 if low >= 0 and high <= 255 else torch.int8 if low >= -128 and high <= 127 else None
    if dtype is None:
        return None
    two_scales = not form.one_scale
    per_channel = max(zero.numel(), form.pos_scale.numel(), form.neg_scale.numel()) > 1
    param_shape = (out, *([1] * (len(shape) - 1))) if per_channel else ()
    size = (out,) if per_channel else ()

    def param(value):
        return value.reshape(-1).expand(out).contiguous() if per_channel else value.reshape(())

    scale = torch.ones(size) if two_scales else param(form.pos_scale)
    pos, neg = (param(s.float()).reshape(param_shape) for s in (form.pos_scale, form.neg_scale))
    args = (q.to(dtype), scale.float(), param(zero).to(dtype), pos, neg, param_shape, two_scales)
    return lambda: IntegerWeight.apply(*args)
