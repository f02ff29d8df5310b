"""The precision a layer runs and is stored at: weight bits, activation bits, bytes of its weights.

Sources, in order (see `deepshrink.encodings` for the encodings):

- weight bits: `module.encoded` (an `EncodedWeight`: its encoding's `bits_per_weight`, e.g. binary 1,
  pq ceil(log2 K) / d, sparse its inner encoding's), else a `weight_bits` attribute (QAT layers set it),
  else the weight's dtype width (32 for float32);
- activation bits: `module.input_quant.bits`, else an `act_bits` attribute, else 32;
- storage bytes: an encoded weight's bytes exactly as the packer writes them (`EncodedWeight.packed_bits`:
  codes at their width, a sparse weight's position index and kept codes, parameters as the file stores them).

Example::

    weight_bits(nn.Linear(4, 4))        # 32.0
    layer.weight_bits = 2; weight_bits(layer)   # 2.0
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..encodings import EncodedWeight
from ..nn.packable import Packable

FLOAT_BITS = 32


def encoded_bits_per_weight(encoded: EncodedWeight) -> float:
    """Code bits per weight element, as its encoding says (binary 1, ternary 2, pq ceil(log2 K) / d, ...)."""
    return encoded.encoding.bits_per_weight(encoded)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def encoded_nbytes(encoded: EncodedWeight) -> int:
    """Bytes the packer writes for `encoded`: codes, sparse index and parameters (`EncodedWeight.packed_bits`)."""
    return encoded.packed_bits() // 8


def encoded_weights(module: nn.Module) -> dict[str, EncodedWeight]:
    """`module`'s own encoded tensors: a Packable's `encoded_tensors()`, else its `encoded` attribute."""
    if isinstance(module, Packable):
        found = dict(module.encoded_tensors())
        if found:
            return found
    encoded = getattr(module, "encoded", None)
    return {"weight": encoded} if isinstance(encoded, EncodedWeight) else {}


def weight_bits(module: nn.Module) -> float:
    """Bits per weight of `module` (encoded weight, else `weight_bits` attribute, else dtype width)."""
    encoded = encoded_weights(module)
    if encoded:
        return encoded_bits_per_weight(encoded.get("weight", next(iter(encoded.values()))))
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


def _float_tensors(module: nn.Module, skip: set[str]) -> list[tuple[str, torch.Tensor]]:
    """Own parameters, plus a Packable's persistent float buffers (inference-form layers such as FBS
    blocks keep folded weights as buffers); BatchNorm running statistics are not parameters."""
    tensors = [(n, p) for n, p in module.named_parameters(recurse=False) if n not in skip]
    if isinstance(module, Packable):
        transient = getattr(module, "_non_persistent_buffers_set", set())
        tensors += [(n, b) for n, b in module.named_buffers(recurse=False)
                    if n not in skip and n not in transient and b.is_floating_point()]
    return tensors


def param_count(module: nn.Module) -> int:
    """Parameters `module` itself holds (not its children); an encoded weight counts as its full shape."""
    encoded = encoded_weights(module)
    return sum(t.numel() for _, t in _float_tensors(module, set(encoded))) + sum(e.numel for e in encoded.values())


def storage_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s own parameters at the precision they are stored at."""
    encoded = encoded_weights(module)
    total = sum(encoded_nbytes(e) for e in encoded.values())
    skip = set(encoded)
    weight = getattr(module, "weight", None)
    if not encoded and getattr(module, "weight_bits", None) is not None and isinstance(weight, torch.Tensor):
        total += math.ceil(weight.numel() * float(module.weight_bits) / 8)  # a QAT layer's quantized weight
        skip.add("weight")
    return total + sum(_tensor_bytes(t) for _, t in _float_tensors(module, skip))
