"""The one in-memory form of a compressed weight: integer codes plus the few floats that decode them.

Every method's `convert` produces `EncodedWeight`s; the packer (deepshrink.packing) writes their codes
at their real bit width; the loader rebuilds them and `dequantize()` gives the float weight back.
What a kind means (how it decodes, its code range, its checks, its file form and size, its ONNX form)
is its registered `Encoding`'s (`weight.encoding`; one module per kind in deepshrink.encodings), so a
method, the file and the loaded model cannot disagree.

W has shape `shape`; per-filter params have shape (out,) and broadcast over the remaining dims,
per-layer params have shape (1,).

Example::

    weight = EncodedWeight("binary", (2, 3), codes=torch.tensor([[0, 1, 1], [1, 0, 0]]),
                           params={"scale": torch.tensor([0.5, 2.0])})
    weight.dequantize()      # [[-0.5, 0.5, 0.5], [2.0, -2.0, -2.0]]
    weight.packed_bits()     # 8 * (1 byte of codes + 8 bytes of scales) = 72
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .registry import encoding_named


@dataclass
class EncodedWeight:
    """Codes and parameters of one weight; `kind` names its registered `Encoding`."""

    kind: str
    shape: tuple[int, ...]
    codes: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    bits: int | None = None  # uniform: code width; pow2: ceil(log2(levels)); pq: ceil(log2(K))
    levels: int | None = None  # pow2 only
    layout: str | None = None  # pq only: "row" | "channel"
    mask: torch.Tensor | None = None  # sparse only
    inner: "EncodedWeight | None" = None  # sparse only

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        encoding_named(self.kind).validate(self)

    @property
    def encoding(self):
        """The registered `Encoding` of this weight's kind: every rule about it lives there."""
        return encoding_named(self.kind)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these codes stand for."""
        return self.encoding.dequantize(self)

    def integer_form(self) -> "IntegerForm | None":
        """The weight as integers times scales, exactly (the form of ONNX's DequantizeLinear and of integer
        engines); None where the kind has none. See `IntegerForm` and each kind's `integer_form`."""
        return self.encoding.integer_form(self)

    def code_range(self) -> tuple[int, int]:
        """Inclusive (low, high) that every code must lie in; the packer and the loader check it."""
        return self.encoding.code_range(self)

    def packed_bits(self, float_dtype: torch.dtype = torch.float32, ternary_base3: bool = False) -> int:
        """Bits the packer writes for this weight (8 x its payload bytes; see `Encoding.packed_bits`)."""
        return self.encoding.packed_bits(self, float_dtype, ternary_base3)


@dataclass
class IntegerForm:
    """W = scale * (q - zero_point), scale = pos_scale where q >= zero_point, else neg_scale; q (W's shape) and
    zero_point (1 or out values) are int64, the scales (1 or out values) float32. See `EncodedWeight.integer_form`."""

    q: torch.Tensor
    zero_point: torch.Tensor
    pos_scale: torch.Tensor
    neg_scale: torch.Tensor

    @property
    def one_scale(self) -> bool:
        """True when both signs share one scale (plain DequantizeLinear)."""
        return torch.equal(self.pos_scale, self.neg_scale)

    def dequantize(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The float weight (an independent check of the form)."""
        centred = (self.q - bcast(self.zero_point, shape).long()).float()
        return torch.where(centred >= 0, bcast(self.pos_scale, shape), bcast(self.neg_scale, shape)) * centred


@dataclass
class SignPlane:
    """One plane of a weight the bit kernels run: W = sum over planes of scale * value(codes), where
    `codes` (W's shape) are binary {0, 1} (value 2c - 1) or, with `ternary`, {-1, 0, 1} (value c), and
    `scale` is float32 (out,), its sign included. See `Encoding.sign_planes`."""

    codes: torch.Tensor
    ternary: bool
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """The plane's share of the float weight (an independent check of the form)."""
        values = self.codes.float() if self.ternary else 2.0 * self.codes.float() - 1.0
        return self.scale.reshape(-1, *[1] * (self.codes.dim() - 1)) * values


def per_channel(param: torch.Tensor, out: int) -> torch.Tensor:
    """A per-layer (numel 1) or per-output-channel parameter as a fresh float32 (out,) tensor."""
    param = param.float().reshape(-1)
    return param.expand(out).clone() if param.numel() == 1 else param.reshape(out).clone()


def bcast(param: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-layer (numel 1) or per-output-channel (shape[0]) parameter, broadcast over `shape`."""
    param = param.float()
    if param.numel() == 1:
        return param.reshape(())
    return param.reshape(shape[0], *([1] * (len(shape) - 1)))
