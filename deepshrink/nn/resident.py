"""Weights as a loaded model keeps them in memory: codes bit-packed at their width, decoded per call.

`ResidentWeight.pack(encoded)` stores an `EncodedWeight` compactly; `expand()` gives the same
EncodedWeight back (codes, mask and parameters exactly as packed), and `decode()` the float weight
through `EncodedWeight.dequantize`, which its encoding (deepshrink.encodings) owns. Unpacking is
plain torch tensor ops, so it runs wherever the layer lives (CPU or GPU) and needs no numpy.

What is kept, per encoding (the `.dsz` payload is the reference; see deepshrink.packing):

- integer codes as unsigned symbols `code - low` (low = the kind's `code_range()[0]`):
  three-symbol alphabets (ternary, 3-level pow2) five to a byte in base 3, 1.6 bits each (as the
  file's `ternary_base3` option); other alphabets at ceil(log2(alphabet)) bits, LSB first (the file's
  "bits" layout); alphabets above 16 bits as int32. The 1-bit binary codes are bit-packed too: a
  byte per weight would be 8x their file size.
- float parameters (scales, zero points, the PQ codebook) at the dtype the file stored them in
  (the PQ codebook is fp16 when the file holds it so).
- sparse: the mask as the file codes it, the cheaper of a bitmap (one bit per weight) and a list of
  gaps between kept positions at a fixed width with escapes (Han et al., "Deep Compression", ICLR
  2016, Sec. 3), and the inner encoding's codes (or float values) at the kept positions only; a PQ
  inner encoding keeps its full code matrix (its blocks span pruned positions).

Example::

    resident = ResidentWeight.pack(encoded)
    weight = resident.decode()          # float32, the shape of the layer's weight
    resident.nbytes                     # bytes of every tensor it holds
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..encodings import EncodedWeight, encoding_named

_CHUNK = 1 << 20  # symbols packed at a time (a multiple of 8 and of 5): bounds the packing's scratch memory
_MAX_PACKED_WIDTH = 16


@dataclass
class PackedSymbols:
    """`count` unsigned symbols below `alphabet`, packed as the alphabet allows (see the module doc)."""

    data: torch.Tensor  # uint8 bytes (base 3 or bits), or int32 symbols for alphabets above 16 bits
    count: int
    alphabet: int

    @property
    def width(self) -> int:
        """Bits per symbol in the bit-packed layout (0 for base 3, 32 for unpacked int32)."""
        if self.alphabet == 3:
            return 0
        width = max(1, math.ceil(math.log2(self.alphabet)))
        return width if width <= _MAX_PACKED_WIDTH else 32

    @classmethod
    def pack(cls, symbols: torch.Tensor, alphabet: int) -> "PackedSymbols":
        """Pack a flat tensor of symbols in 0 .. alphabet - 1."""
        symbols = symbols.reshape(-1).to(torch.int64)
        packed = cls(torch.zeros(0, dtype=torch.uint8), symbols.numel(), int(alphabet))
        width = packed.width
        if width == 32:
            packed.data = symbols.to(torch.int32)
        else:
            parts = [_pack_chunk(symbols[start:start + _CHUNK], width)
                     for start in range(0, symbols.numel(), _CHUNK)]
            packed.data = torch.cat(parts) if parts else packed.data.to(symbols.device)
        return packed

    def unpack(self) -> torch.Tensor:
        """The symbols, as a flat int64 tensor on the device of `data`."""
        width, data = self.width, self.data
        if width == 32:
            return data.to(torch.int64)
        if width == 0:  # base 3: byte = sum_i t_i 3^i
            powers = 3 ** torch.arange(5, device=data.device)  # (5,)
            return ((data.to(torch.int64)[:, None] // powers) % 3).reshape(-1)[:self.count]  # (bytes * 5,)
        if 8 % width == 0:  # whole symbols per byte: one shift per slot
            shifts = torch.arange(0, 8, width, device=data.device)  # (8 / width,)
            return ((data.to(torch.int64)[:, None] >> shifts) & ((1 << width) - 1)).reshape(-1)[:self.count]
        # a symbol of <= 16 bits starting at bit offset 0..7 lies within three bytes
        start = torch.arange(self.count, device=data.device) * width  # (count,) bit offsets
        padded = torch.cat([data, data.new_zeros(2)]).to(torch.int64)
        byte = start >> 3
        word = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16)
        return (word >> (start & 7)) & ((1 << width) - 1)


def _pack_chunk(symbols: torch.Tensor, width: int) -> torch.Tensor:
    """Pack one chunk (its length a multiple of 8 and 5, or the last chunk) to uint8 bytes."""
    if width == 0:  # base 3, five trits per byte
        padded = torch.nn.functional.pad(symbols, (0, -symbols.numel() % 5))
        powers = 3 ** torch.arange(5, device=symbols.device)
        return (padded.reshape(-1, 5) * powers).sum(1).to(torch.uint8)  # (n / 5,)
    bits = (symbols[:, None] >> torch.arange(width, device=symbols.device)) & 1  # (n, width), LSB first
    bits = torch.nn.functional.pad(bits.reshape(-1), (0, -bits.numel() % 8))
    return (bits.reshape(-1, 8) << torch.arange(8, device=symbols.device)).sum(1).to(torch.uint8)  # (n w / 8,)


@dataclass
class ResidentWeight:
    """An `EncodedWeight` held compactly; `expand()` rebuilds it, `decode()` gives the float weight.

    Fields mirror EncodedWeight's; `codes` are packed symbols (code - `code_low`), `mask` the sparse
    mask's bits, and `kept_only` marks a sparse inner encoding that holds its mask positions only.
    """

    kind: str
    shape: tuple[int, ...]
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: PackedSymbols | None = None
    code_low: int = 0
    code_dtype: torch.dtype | None = None
    code_shape: tuple[int, ...] | None = None
    bits: int | None = None
    levels: int | None = None
    layout: str | None = None
    mask: PackedSymbols | None = None  # alphabet 2: a bitmap; 2^w: gaps at w bits, 2^w - 1 the escape
    inner: "ResidentWeight | None" = None
    kept_only: bool = False

    @classmethod
    def pack(cls, encoded: EncodedWeight, kept: torch.Tensor | None = None) -> "ResidentWeight":
        """Pack `encoded`; `kept` (a flat bool mask) keeps only those entries (a sparse inner weight)."""
        encoding = encoded.encoding
        if encoded.inner is not None:  # sparse: a mask over an inner weight
            mask = encoded.mask.reshape(-1).to(torch.bool)
            inner = cls.pack(encoded.inner, mask if encoded.inner.encoding.codes_per_weight else None)
            return cls(encoded.kind, encoded.shape, mask=_pack_mask(mask), inner=inner)
        params = {key: value.detach() for key, value in encoded.params.items()}
        resident = cls(encoded.kind, encoded.shape, params, bits=encoded.bits, levels=encoded.levels,
                       layout=encoded.layout, kept_only=kept is not None)
        if kept is not None:
            for key in encoding.per_weight_params:
                params[key] = params[key].reshape(-1)[kept].clone()
        if not encoding.has_codes:
            return resident
        low, high = encoded.code_range()
        codes = encoded.codes.detach()
        resident.code_low, resident.code_dtype, resident.code_shape = low, codes.dtype, tuple(codes.shape)
        flat = codes.reshape(-1).to(torch.int64)
        if kept is not None:
            flat = flat[kept.to(flat.device)]
        if flat.numel() and (int(flat.min()) < low or int(flat.max()) > high):
            raise ValueError(f"{encoded.kind} codes span {int(flat.min())}..{int(flat.max())}, outside {low}..{high}")
        resident.codes = PackedSymbols.pack(flat - low, high - low + 1)
        return resident

    def expand(self, kept: torch.Tensor | None = None) -> EncodedWeight:
        """The EncodedWeight this holds (codes at pruned positions of a sparse inner weight: the code
        nearest 0, as the loader fills them)."""
        if self.inner is not None:
            mask = _unpack_mask(self.mask, math.prod(self.shape))  # (numel,)
            inner = self.inner.expand(mask if self.inner.kept_only else None)
            return EncodedWeight(self.kind, self.shape, mask=mask.reshape(self.shape), inner=inner)
        numel = math.prod(self.shape)
        params = dict(self.params)
        if self.kept_only:  # per-weight values at the kept positions, 0 elsewhere
            for key in encoding_named(self.kind).per_weight_params:
                values = params[key]
                params[key] = values.new_zeros(numel).masked_scatter(kept, values).reshape(self.shape)
        if self.codes is None:
            return EncodedWeight(self.kind, self.shape, params=params)
        codes = self.codes.unpack() + self.code_low
        if self.kept_only:
            fill = min(max(0, self.code_low), self.code_low + self.codes.alphabet - 1)
            codes = torch.full((numel,), fill, dtype=torch.int64, device=codes.device).masked_scatter(kept, codes)
        return EncodedWeight(self.kind, self.shape, codes=codes.to(self.code_dtype).reshape(self.code_shape),
                             params=params, bits=self.bits, levels=self.levels, layout=self.layout)

    def decode(self) -> torch.Tensor:
        """The float32 weight (a fresh tensor on each call)."""
        return self.expand().dequantize()

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this holds."""
        found = list(self.params.values())
        found += [packed.data for packed in (self.codes, self.mask) if packed is not None]
        return found + (self.inner.tensors() if self.inner is not None else [])

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it holds (what this weight costs in memory)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ResidentWeight":
        """A copy with `fn` applied to every tensor (nn.Module._apply's device and dtype moves)."""
        moved = replace(self, params={key: fn(value) for key, value in self.params.items()})
        for name in ("codes", "mask"):
            packed = getattr(self, name)
            if packed is not None:
                setattr(moved, name, replace(packed, data=fn(packed.data)))
        if self.inner is not None:
            moved.inner = self.inner.apply(fn)
        return moved


def _gap_symbols(positions: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """Gaps minus one between kept positions, each split into escapes (2^width - 1: 'skip that many')
    and a remainder; returns (symbols or an empty tensor when only counting, their count)."""
    escape = (1 << width) - 1
    gaps = torch.diff(positions, prepend=positions.new_full((1,), -1)) - 1  # (kept,)
    n_escapes = gaps // escape
    return n_escapes, int(n_escapes.sum()) + gaps.numel()


def _pack_mask(mask: torch.Tensor) -> PackedSymbols:
    """The cheaper of a bitmap and gap symbols at the best width (as the .dsz file chooses)."""
    positions = torch.nonzero(mask).reshape(-1)
    best_width, best_bits = 1, mask.numel()
    for width in range(2, 25):
        bits = _gap_symbols(positions, width)[1] * width
        if bits < best_bits:
            best_width, best_bits = width, bits
    if best_width == 1:
        return PackedSymbols.pack(mask.to(torch.int64), 2)
    escape = (1 << best_width) - 1
    n_escapes, count = _gap_symbols(positions, best_width)
    gaps = torch.diff(positions, prepend=positions.new_full((1,), -1)) - 1
    symbols = torch.full((count,), escape, dtype=torch.int64, device=mask.device)
    symbols[torch.cumsum(n_escapes + 1, 0) - 1] = gaps % escape  # each gap's remainder after its escapes
    return PackedSymbols.pack(symbols, escape + 1)


def _unpack_mask(packed: PackedSymbols, numel: int) -> torch.Tensor:
    """Inverse of `_pack_mask`: the flat bool mask."""
    symbols = packed.unpack()
    if packed.alphabet == 2:
        return symbols.to(torch.bool)
    escape = packed.alphabet - 1
    is_escape = symbols == escape
    positions = (torch.cumsum(torch.where(is_escape, escape, symbols + 1), 0) - 1)[~is_escape]
    return torch.zeros(numel, dtype=torch.bool, device=symbols.device).scatter(0, positions, True)
