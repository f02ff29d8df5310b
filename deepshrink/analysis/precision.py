"""The precision a layer runs and is stored at: weight bits, activation bits, bytes of its weights.

Sources, in order (see `deepshrink.nn.encoded` for the encodings):

- weight bits: `module.encoded` (an `EncodedWeight`: binary 1, ternary 2, uniform/pow2 `bits`,
  pq ceil(log2 K) / d per weight, float 32, sparse: its inner encoding), else a `weight_bits` attribute
  (QAT layers set it), else the weight's dtype width (32 for float32);
- activation bits: `module.input_quant.bits`, else an `act_bits` attribute, else 32;
- storage bytes: codes at their bit width + every float parameter of the encoding (scales, PQ codebooks)
  at its dtype; a sparse weight stores only its kept codes plus a 1-bit-per-weight mask.

Example::

    weight_bits(nn.Linear(4, 4))        # 32.0
    layer.weight_bits = 2; weight_bits(layer)   # 2.0
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.encoded import EncodedWeight

FLOAT_BITS = 32


def encoded_bits_per_weight(encoded: EncodedWeight) -> float:
    """Code bits per weight element: 1 binary, 2 ternary, `bits` uniform/pow2, ceil(log2 K)/d for PQ."""
    kind = encoded.kind
    if kind == "binary":
        return 1.0
    if kind == "ternary":
        return 2.0
    if kind in ("uniform", "pow2"):
        return float(encoded.bits)
    if kind == "pq":
        block_size = encoded.params["codebook"].shape[2]  # codebook (S, K, d)
        return encoded.bits / block_size
    if kind == "float":
        return float(encoded.params["values"].element_size() * 8)
    if kind == "sparse":
        return encoded_bits_per_weight(encoded.inner)
    raise ValueError(f"unknown encoding {kind!r}")


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def encoded_nbytes(encoded: EncodedWeight, kept: int | None = None) -> int:
    """Bytes to store `encoded`: codes at their width plus its float parameters (scales, codebooks).

    `kept` is the number of stored weights when the encoding sits inside a sparse one.
    """
    n_weights = encoded.numel if kept is None else kept
    if encoded.kind == "sparse":
        kept = int(encoded.mask.sum())
        mask_bytes = math.ceil(encoded.numel / 8)  # one bit per weight position
        return mask_bytes + encoded_nbytes(encoded.inner, kept=kept)
    params = encoded.params
    if encoded.kind == "float":
        values = params["values"]
        return n_weights * values.element_size() + sum(_tensor_bytes(v) for k, v in params.items() if k != "values")
    if encoded.kind == "pq":
        block_size = params["codebook"].shape[2]
        n_codes = math.ceil(n_weights / block_size)
        code_bytes = math.ceil(n_codes * encoded.bits / 8)
    else:
        code_bytes = math.ceil(n_weights * encoded_bits_per_weight(encoded) / 8)
    return code_bytes + sum(_tensor_bytes(v) for v in params.values())


def weight_bits(module: nn.Module) -> float:
    """Bits per weight of `module` (encoded weight, else `weight_bits` attribute, else dtype width)."""
    encoded = getattr(module, "encoded", None)
    if isinstance(encoded, EncodedWeight):
        return encoded_bits_per_weight(encoded)
    bits = getattr(module, "weight_bits", None)
    if bits is not None:
        return float(bits)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return float(weight.element_size() * 8)
    return float(FLOAT_BITS)


def act_bits(module: nn.Module) -> float:
    """Bits of the activations `module` consumes (`input_quant.bits`, else `act_bits`, else 32)."""
    quantizer = getattr(module, "input_quant", None)
    bits = getattr(quantizer, "bits", None) if quantizer is not None else None
    if bits is None:
        bits = getattr(module, "act_bits", None)
    return float(FLOAT_BITS if bits is None else bits)


def param_count(module: nn.Module) -> int:
    """Parameters `module` itself holds (not its children); an encoded weight counts as its full shape."""
    count = sum(p.numel() for p in module.parameters(recurse=False))
    encoded = getattr(module, "encoded", None)
    if isinstance(encoded, EncodedWeight) and not isinstance(getattr(module, "weight", None), nn.Parameter):
        count += encoded.numel  # the decoded weight is a buffer, the codes are the parameters
    return count


def storage_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s own parameters at the precision they are stored at."""
    encoded = getattr(module, "encoded", None)
    total = 0
    skip_weight = False
    if isinstance(encoded, EncodedWeight):
        total += encoded_nbytes(encoded)
        skip_weight = True
    elif getattr(module, "weight_bits", None) is not None and isinstance(getattr(module, "weight", None),
                                                                          torch.Tensor):
        total += math.ceil(module.weight.numel() * float(module.weight_bits) / 8)
        skip_weight = True
    for name, param in module.named_parameters(recurse=False):
        if not (skip_weight and name == "weight"):
            total += _tensor_bytes(param)
    return total
