"""Sparse weights (pruning: L-OBS, Co-Prune, magnitude): a bool `mask` of W's shape over an `inner` encoding.

W = inner * mask. In the file: the kept positions as the cheaper of a bitmap and a delta-coded index
list (`bits.encode_positions`; Han et al., "Deep Compression", ICLR 2016, Sec. 3), then the inner
encoding's codes or values at the kept positions only (all of them for an inner encoding whose codes
stand for blocks, such as pq). A sparse weight does not nest another.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError
from .base import Encoding, decode_weight, describe
from .bits import decode_positions, encode_positions
from .checks import check_int, fail
from .registry import ENCODINGS, register_encoding
from .weight import EncodedWeight, IntegerForm, bcast


@register_encoding
class Sparse(Encoding):
    name = "sparse"

    def validate(self, weight):
        if weight.mask is None or weight.inner is None:
            raise ValueError("sparse encoding needs a mask and an inner encoding")

    def bits_per_weight(self, weight):
        return weight.inner.encoding.bits_per_weight(weight.inner)

    def dequantize(self, weight):
        return weight.inner.dequantize() * weight.mask.reshape(weight.shape).float()

    def integer_form(self, weight):
        """The inner form with pruned weights at the zero point."""
        inner = weight.inner.integer_form()
        if inner is None:
            return None
        mask = weight.mask.reshape(weight.shape).to(torch.bool)
        return IntegerForm(torch.where(mask, inner.q, bcast(inner.zero_point, weight.shape).long()),
                           inner.zero_point, inner.pos_scale, inner.neg_scale)

    def no_integer_form(self, weight):
        return f"sparse over {weight.inner.encoding.no_integer_form(weight.inner)}"

    def encode(self, weight, sink, name, float_dtype, kept=None) -> dict:
        inner = weight.inner.encoding
        if inner is self:
            raise UserError(f"{name}: a sparse encoding inside a sparse encoding cannot be packed")
        meta = {"kind": self.name, "shape": list(weight.shape)}
        mask = weight.mask.detach().cpu().reshape(-1).numpy() != 0
        method, width, symbols = encode_positions(mask)
        meta.update(index=method, mask=sink.stream(symbols, width, 2 if method == "bitmap" else 1 << width))
        meta["inner"] = inner.encode(weight.inner, sink, name, float_dtype, mask if inner.codes_per_weight else None)
        return meta

    def decode(self, meta, reader, what, shape, kept=None) -> EncodedWeight:
        numel = math.prod(shape)
        index, ref = meta.get("index"), meta.get("mask")
        if not isinstance(ref, dict) or index not in ("bitmap", "delta"):
            fail(what, f"sparse index must be 'bitmap' or 'delta' with a stream, found {index!r}")
        if index == "bitmap":
            width, count, alphabet = 1, numel, 2
        else:
            width = check_int(ref.get("w"), what + " index width", 2, 24)
            count, alphabet = check_int(ref.get("count"), what + " index count", 0, 2 * numel), 1 << width
        symbols = reader.stream(ref, what + " (sparse index)", count, width, alphabet)
        try:
            mask = decode_positions(index, width, symbols, numel)
        except ValueError as exc:
            fail(what, f"sparse index: {exc}")
        inner_meta = meta.get("inner")
        inner_kind = inner_meta.get("kind") if isinstance(inner_meta, dict) else None
        if inner_kind == self.name:
            fail(what, "a sparse encoding cannot nest another sparse encoding")
        inner = decode_weight(inner_meta, reader, what, shape, _kept_for(inner_kind, mask))
        return EncodedWeight(self.name, shape, mask=torch.from_numpy(mask).reshape(shape), inner=inner)

    def describe(self, meta):
        return f"sparse({describe(meta['inner'])}, {meta['index']} index)"


def _kept_for(inner_kind, mask: np.ndarray) -> np.ndarray | None:
    """The mask an inner encoding of `inner_kind` is stored under (None: all its codes are stored)."""
    inner = ENCODINGS.get(inner_kind) if isinstance(inner_kind, str) else None
    return None if inner is not None and not inner.codes_per_weight else mask
