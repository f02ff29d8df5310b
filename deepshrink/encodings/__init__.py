"""Encodings of compressed weights: `EncodedWeight` (codes + the floats that decode them) and its kinds.

Each kind is one module holding one registered `Encoding` (see `base`): how it decodes, its code
range and checks, its `.dsz` form and the exact bits the packer writes for it, its `inspect` text and
its ONNX form, its forms for the integer engine and the bit kernels. Everything else (the packer, the
loader, resident weights, the layer-wise driver, the size analysis, the report, ONNX export, the
run-time engines) asks the weight's encoding and never switches on its name.

| kind | codes | decodes to |
|---|---|---|
| binary | {0, 1} | scale * (2c - 1) |
| ternary | {-1, 0, 1} | pos_scale [c = 1] - neg_scale [c = -1] |
| uniform | 0 .. 2^bits - 1 | (c - zero_point) * scale |
| pow2 | -(L-1)/2 .. (L-1)/2 | sign(c) alpha 2^(abs(c) - 1), 0 for c = 0 |
| pq | 0 .. K-1 per block | codebook rows (Stock et al. 2020) |
| float | none | params['values'] |
| sparse | a mask | inner * mask |

Adding a kind: a module here with a `@register_encoding` class, imported below; the tests under
tests/encodings run over every registered kind (tests/packing/conftest.py lists one weight per kind).

Example::

    weight = EncodedWeight("uniform", (4, 8), codes=torch.randint(0, 16, (4, 8)), bits=4,
                           params={"scale": torch.tensor([0.1]), "zero_point": torch.tensor([7.5])})
    weight.dequantize()        # (4, 8) float32
    weight.packed_bits()       # 8 * (16 bytes of codes + 8 bytes of parameters) = 192
"""
from .base import ByteCounter, CodedEncoding, Encoding, decode_weight, describe, encode_weight
from .registry import ENCODINGS, encoding_named, kinds, register_encoding
from .weight import EncodedWeight, IntegerForm, SignPlane, per_channel

from . import binary, ternary, uniform, pow2, pq, floating, sparse  # noqa: F401,I001 (registers them, in this order)
from .pq import pq_blocks, pq_unblocks

__all__ = ["ENCODINGS", "ByteCounter", "CodedEncoding", "EncodedWeight", "Encoding", "IntegerForm", "SignPlane",
           "decode_weight", "describe", "encode_weight", "encoding_named", "kinds", "per_channel", "pq_blocks",
           "pq_unblocks", "register_encoding"]
