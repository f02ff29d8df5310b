"""Float weights: params['values'] holds W itself (a pruned float layer is a ``sparse`` over ``float``).

In the file the values take the packer's float dtype (fp32, fp16 or bf16), the kept ones only inside a
sparse weight. No integer form: ONNX export writes them as a float initialiser, and the integer engine
rounds them to int8 itself, as it does an uncompressed layer (`float_values`).
"""
from __future__ import annotations

import math

import torch

from .base import Encoding
from .checks import fail
from .registry import register_encoding
from .weight import EncodedWeight


@register_encoding
class Float(Encoding):
    name = "float"
    param_names = ("values",)
    per_weight_params = ("values",)
    float_values = True

    def bits_per_weight(self, weight):
        return float(weight.params["values"].element_size() * 8)

    def dequantize(self, weight):
        return weight.params["values"].float().reshape(weight.shape)

    def store_param(self, key, value, float_dtype):
        return value.to(float_dtype) if key == "values" and value.is_floating_point() else value

    def decode_values(self, meta, reader, what, shape, params, kept):
        numel = math.prod(shape)
        values = params["values"].reshape(-1)
        stored = numel if kept is None else int(kept.sum())
        if values.numel() != stored:
            fail(what, f"holds {values.numel()} float values for {stored} weights")
        if kept is not None:  # pruned positions hold 0
            full = torch.zeros(numel, dtype=values.dtype)
            full[torch.from_numpy(kept)] = values
            values = full
        return EncodedWeight(self.name, shape, params={"values": values.reshape(shape)})

    def describe(self, meta):
        return f"float {meta['params']['values']['b']}"
