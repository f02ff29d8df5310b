"""Bit packing of integer code streams: fixed width, base-3 (ternary) and sparse position lists.

Every function is vectorised with numpy (no Python loop over weights). Codes are unsigned symbols
(a kind's codes minus the low end of its range, see `EncodedWeight.code_range`).

- `pack_bits` / `unpack_bits`: `width` bits per symbol, LSB first, `ceil(n * width / 8)` bytes.
- `pack_base3` / `unpack_base3`: 5 trits per byte (3^5 = 243 <= 256): 1.6 bits per ternary weight
  instead of 2.
- `encode_positions` / `decode_positions`: the kept positions of a sparse weight as a bitmap or as a
  delta-coded index list with escapes (Han et al., "Deep Compression", ICLR 2016, Sec. 3: relative
  indices with filler entries when a gap exceeds the index width), whichever is smaller.

Example::

    packed = pack_bits(np.array([3, 0, 2]), 2)   # one byte: 0b00100011
    unpack_bits(packed, 2, 3)                    # array([3, 0, 2])
"""
from __future__ import annotations

import numpy as np

MAX_WIDTH = 32
_CHUNK = 1 << 20
_POW3 = 3 ** np.arange(5, dtype=np.int64)  # (5,)


def packed_nbytes(count: int, width: int) -> int:
    """Bytes that `count` symbols of `width` bits occupy."""
    return (count * width + 7) // 8


def base3_nbytes(count: int) -> int:
    """Bytes that `count` trits occupy five to a byte (`pack_base3`)."""
    return -(-count // 5)


def pack_bits(symbols: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned `symbols` (each < 2**width) at `width` bits each into a uint8 array."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be in 1..{MAX_WIDTH}, got {width}")
    values = np.asarray(symbols).astype(np.uint64).reshape(-1)
    if values.size and int(values.max()) >> width:
        raise ValueError(f"a symbol ({int(values.max())}) does not fit in {width} bits")
    shifts = np.arange(width, dtype=np.uint64)
    chunks = []
    for start in range(0, max(values.size, 1), _CHUNK):  # chunks of 2^20 symbols bound the memory
        part = values[start:start + _CHUNK]
        bits = ((part[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)  # (chunk, width), LSB first
        chunks.append(np.packbits(bits.reshape(-1), bitorder="little"))
    return np.concatenate(chunks)


def unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` symbols of `width` bits, as int64."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be in 1..{MAX_WIDTH}, got {width}")
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != packed_nbytes(count, width):
        raise ValueError(f"{count} symbols of {width} bits need {packed_nbytes(count, width)} bytes, "
                         f"found {packed.size}")
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))  # (width,)
    chunk_bytes = _CHUNK * width // 8  # _CHUNK is a multiple of 8: chunks start on byte boundaries
    out = [np.zeros(0, dtype=np.int64)]
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        part = packed[start // _CHUNK * chunk_bytes:][:packed_nbytes(n, width)]
        bits = np.unpackbits(part, count=n * width, bitorder="little").reshape(n, width)  # (n, width)
        out.append(bits.astype(np.int64) @ weights)
    return np.concatenate(out)


def pack_base3(trits: np.ndarray) -> np.ndarray:
    """Pack symbols in {0, 1, 2} five to a byte (value = sum t_i 3^i <= 242)."""
    trits = np.asarray(trits).astype(np.int64).reshape(-1)
    if trits.size and (trits.min() < 0 or trits.max() > 2):
        raise ValueError("base-3 packing takes symbols in 0..2")
    padded = np.zeros(-(-trits.size // 5) * 5, dtype=np.int64)
    padded[:trits.size] = trits
    return (padded.reshape(-1, 5) @ _POW3).astype(np.uint8)  # (n/5,)


def unpack_base3(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `pack_base3`; raises ValueError on a byte above 242 (not five trits)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1).astype(np.int64)
    if packed.size != base3_nbytes(count):
        raise ValueError(f"{count} trits need {base3_nbytes(count)} base-3 bytes, found {packed.size}")
    if packed.size and packed.max() > 242:
        raise ValueError(f"base-3 byte {int(packed.max())} exceeds 242")
    trits = (packed[:, None] // _POW3) % 3  # (bytes, 5)
    return trits.reshape(-1)[:count]


def _delta_symbols(positions: np.ndarray, width: int) -> np.ndarray:
    """Gaps minus one, split into escape symbols (2^width - 1 = 'skip that many') plus a remainder."""
    escape = (1 << width) - 1
    gaps = np.diff(positions, prepend=-1) - 1  # >= 0
    n_escapes = gaps // escape
    symbols = np.full(int(n_escapes.sum()) + gaps.size, escape, dtype=np.int64)
    terminals = np.cumsum(n_escapes + 1) - 1  # index of each gap's remainder symbol
    symbols[terminals] = gaps % escape
    return symbols


def _delta_count(positions: np.ndarray, width: int) -> int:
    gaps = np.diff(positions, prepend=-1) - 1
    return int((gaps // ((1 << width) - 1)).sum()) + gaps.size


def encode_positions(mask: np.ndarray) -> tuple[str, int, np.ndarray]:
    """The cheaper of a bitmap and a delta-coded index list for a flat bool mask.

    Returns (method, width, symbols): ("bitmap", 1, mask as 0/1) or ("delta", w, gap symbols).
    """
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    positions = np.flatnonzero(mask)
    best = ("bitmap", 1, mask.size)
    for width in range(2, 25):
        cost = _delta_count(positions, width) * width
        if cost < best[2]:
            best = ("delta", width, cost)
    method, width, _ = best
    if method == "bitmap":
        return method, 1, mask.astype(np.int64)
    return method, width, _delta_symbols(positions, width)


def decode_positions(method: str, width: int, symbols: np.ndarray, numel: int) -> np.ndarray:
    """Inverse of `encode_positions`: the flat bool mask of `numel` entries."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if method == "bitmap":
        if symbols.size != numel:
            raise ValueError(f"bitmap has {symbols.size} bits for {numel} weights")
        return symbols.astype(bool)
    if method != "delta":
        raise ValueError(f"unknown position coding {method!r}")
    escape = (1 << width) - 1
    is_escape = symbols == escape
    steps = np.where(is_escape, escape, symbols + 1)
    positions = (np.cumsum(steps) - 1)[~is_escape]
    if positions.size and positions[-1] >= numel:
        raise ValueError(f"sparse index {int(positions[-1])} beyond the {numel} weights")
    mask = np.zeros(numel, dtype=bool)
    mask[positions] = True
    return mask
