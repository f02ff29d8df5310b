"""The one in-memory form of a compressed weight: integer codes plus the few floats that decode them.

Every method's `convert` produces `EncodedWeight`s; the packer (deepshrink.packing) writes their codes
at their real bit width; the loader rebuilds them and `dequantize()` gives the float weight back.
Decoding lives here and only here, so a method, the file and the loaded model cannot disagree.

Kinds and their decoding (W has shape `shape`; per-filter params have shape (out,) and broadcast
over the remaining dims, per-layer params have shape (1,)):

- ``binary``:  codes in {0, 1};           W = scale * (2 * codes - 1)
- ``ternary``: codes in {-1, 0, 1};       W = pos_scale * [codes == 1] - neg_scale * [codes == -1]
- ``uniform``: codes in 0 .. 2^bits - 1;  W = (codes - zero_point) * scale
- ``pow2``:    codes in -(L-1)/2 .. (L-1)/2 for L = `levels` (odd); W = 0 for code 0,
               sign(c) * alpha * 2^(|c| - 1) otherwise  (L-DNQ's {0, ±a, ±2a, ±4a, ...})
- ``pq``:      codes (out, n_blocks) in 0 .. K-1, codebook (S, K, d); block j of row o decodes to
               codebook[j // (n_blocks // S), codes[o, j]]; `layout` says where blocks sit (below)
- ``float``:   params['values'] holds W itself (used inside ``sparse`` for pruned float layers)
- ``sparse``:  a bool `mask` of W's shape plus an `inner` EncodedWeight of W's shape; W = inner * mask;
               only codes at mask positions are stored

PQ layouts, for a conv weight (out, in, kh, kw) or a linear weight (out, in):
- ``row``:     blocks are consecutive runs of d values of W.reshape(out, -1), i.e. along the kernel
               window for 3x3 convs (d = 9 is one whole kernel) and along input channels for 1x1/linear
- ``channel``: blocks run along input channels: W.permute(0, 2, 3, 1).reshape(out, -1) (ChangeDim)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

KINDS = ("binary", "ternary", "uniform", "pow2", "pq", "float", "sparse")


@dataclass
class EncodedWeight:
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
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoding {self.kind!r}; one of {KINDS}")
        if self.kind == "pow2":
            if self.levels is None or self.levels < 3 or self.levels % 2 == 0:
                raise ValueError(f"pow2 encoding needs an odd levels >= 3, got {self.levels}")
            self.bits = math.ceil(math.log2(self.levels))
        if self.kind == "uniform" and not (self.bits and 1 <= self.bits <= 16):
            raise ValueError(f"uniform encoding needs bits in 1..16, got {self.bits}")
        if self.kind == "pq":
            if self.layout not in ("row", "channel"):
                raise ValueError(f"pq layout must be 'row' or 'channel', got {self.layout!r}")
            n_centroids = self.params["codebook"].shape[1]
            self.bits = max(1, math.ceil(math.log2(n_centroids)))
        if self.kind == "sparse" and (self.mask is None or self.inner is None):
            raise ValueError("sparse encoding needs a mask and an inner encoding")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these codes stand for."""
        k, p = self.kind, self.params
        if k == "float":
            return p["values"].float().reshape(self.shape)
        if k == "sparse":
            return self.inner.dequantize() * self.mask.reshape(self.shape).float()
        if k == "pq":
            return _decode_pq(self.codes, p["codebook"].float(), self.shape, self.layout)
        codes = self.codes.reshape(self.shape)
        if k == "binary":
            return _bcast(p["scale"], self.shape) * (2.0 * codes.float() - 1.0)
        if k == "ternary":
            pos = _bcast(p["pos_scale"], self.shape)
            neg = _bcast(p["neg_scale"], self.shape)
            return pos * (codes == 1).float() - neg * (codes == -1).float()
        if k == "uniform":
            return (codes.float() - _bcast(p["zero_point"], self.shape)) * _bcast(p["scale"], self.shape)
        if k == "pow2":
            c = codes.long()
            magnitude = torch.pow(2.0, (c.abs() - 1).clamp(min=0).float())
            return _bcast(p["alpha"], self.shape) * torch.sign(c).float() * magnitude
        raise AssertionError(k)

    def integer_form(self) -> "IntegerForm | None":
        """The weight as integers times scales, exactly: W = pos_scale * (q - zero_point) where q >= zero_point,
        neg_scale * (q - zero_point) below it (one scale when the two are equal). This is the form of ONNX's
        DequantizeLinear (and of integer engines): binary q = 2c - 1, ternary q = c, pow2 q = sign(c) 2^(|c|-1)
        (L-DNQ's {0, ±a, ±2a, ±4a} are integers times a), uniform q = c with its zero point (2c and 2z at half
        the scale for a half-integer z, DoReFa's grid centre), sparse its inner form with pruned weights at the
        zero point. None where no such form exists (pq, float, a uniform zero point off the half-integers)."""
        k, p = self.kind, self.params
        if k == "sparse":
            inner = self.inner.integer_form()
            if inner is None:
                return None
            mask = self.mask.reshape(self.shape).to(torch.bool)
            return IntegerForm(torch.where(mask, inner.q, _bcast(inner.zero_point, self.shape).long()),
                               inner.zero_point, inner.pos_scale, inner.neg_scale)
        if k in ("pq", "float"):
            return None
        codes = self.codes.reshape(self.shape).long()
        zero = torch.zeros(1, dtype=torch.long)
        if k == "binary":
            return IntegerForm(2 * codes - 1, zero, p["scale"].float(), p["scale"].float())
        if k == "ternary":
            return IntegerForm(codes, zero, p["pos_scale"].float(), p["neg_scale"].float())
        if k == "pow2":
            magnitude = torch.ones_like(codes) << (codes.abs() - 1).clamp(min=0)
            return IntegerForm(torch.sign(codes) * magnitude, zero, p["alpha"].float(), p["alpha"].float())
        if k == "uniform":
            zero_point, scale = p["zero_point"].double(), p["scale"].float()
            for factor in (1, 2):  # (c - z) s == (2c - 2z)(s / 2) exactly in float
                if torch.equal(zero_point * factor, (zero_point * factor).round()):
                    return IntegerForm(codes * factor, (zero_point * factor).long(), scale / factor, scale / factor)
            return None
        raise AssertionError(k)

    def code_range(self) -> tuple[int, int]:
        """Inclusive (low, high) that every code must lie in; the packer and the loader check it."""
        if self.kind == "binary":
            return 0, 1
        if self.kind == "ternary":
            return -1, 1
        if self.kind == "uniform":
            return 0, 2**self.bits - 1
        if self.kind == "pow2":
            half = (self.levels - 1) // 2
            return -half, half
        if self.kind == "pq":
            return 0, self.params["codebook"].shape[1] - 1
        raise ValueError(f"{self.kind} encoding has no codes")


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
        centred = (self.q - _bcast(self.zero_point, shape).long()).float()
        return torch.where(centred >= 0, _bcast(self.pos_scale, shape), _bcast(self.neg_scale, shape)) * centred


def _bcast(param: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-layer (numel 1) or per-output-channel (shape[0]) parameter, broadcast over `shape`."""
    param = param.float()
    if param.numel() == 1:
        return param.reshape(())
    return param.reshape(shape[0], *([1] * (len(shape) - 1)))


def pq_blocks(weight: torch.Tensor, block_size: int, layout: str) -> torch.Tensor:
    """Split a weight into PQ blocks: returns (out, n_blocks, block_size) for the given layout."""
    out = weight.shape[0]
    if layout == "channel" and weight.dim() == 4:
        weight = weight.permute(0, 2, 3, 1)  # (out, kh, kw, in): blocks run along input channels
    flat = weight.reshape(out, -1)  # (out, cols)
    if flat.shape[1] % block_size:
        raise ValueError(f"block size {block_size} does not divide the {flat.shape[1]} columns of the weight")
    return flat.reshape(out, flat.shape[1] // block_size, block_size)


def pq_unblocks(blocks: torch.Tensor, shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """Inverse of `pq_blocks`: (out, n_blocks, d) back to the weight's shape."""
    out = shape[0]
    if layout == "channel" and len(shape) == 4:
        _, cin, kh, kw = shape
        return blocks.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return blocks.reshape(shape)


def _decode_pq(codes: torch.Tensor, codebook: torch.Tensor, shape, layout: str) -> torch.Tensor:
    n_sub, _, block_size = codebook.shape  # (S, K, d)
    codes = codes.long()
    out, n_blocks = codes.shape
    subspace = torch.arange(n_blocks) // (n_blocks // n_sub)  # (n_blocks,)
    blocks = codebook[subspace.unsqueeze(0).expand(out, -1), codes]  # (out, n_blocks, d)
    return pq_unblocks(blocks, tuple(shape), layout)
