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
from ..nn.packable import Packable

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
