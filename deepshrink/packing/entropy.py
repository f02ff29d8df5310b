"""Entropy coding of code streams: the Shannon bound, zstandard, and an interleaved rANS coder.

rANS (Duda, "Asymmetric numeral systems", arXiv:1311.2540, Sec. 4; the 32-bit state / 16-bit word
variant of Giesen's ryg_rans) codes a symbol s of quantized frequency f_s and cumulative start c_s as
    x' = floor(x / f_s) * M + (x mod f_s) + c_s,   M = 2^15,
spending log2(M / f_s) bits, i.e. within a hair of the empirical entropy. It is vectorised over
`lanes` interleaved states (lane j codes symbols j, j + lanes, ...), so the Python loop runs
n / lanes steps of numpy operations rather than n; each lane costs 32 bits of final state.

Stream layout (little endian): uint16 alphabet size A, A x uint16 frequencies, uint32 lanes,
lanes x uint32 final states, then the uint16 renormalisation words in decoding order.

Example::

    payload = rans_encode(symbols, alphabet=3)
    assert (rans_decode(payload, len(symbols)) == symbols).all()
"""
from __future__ import annotations

import numpy as np
import zstandard

SCALE_BITS = 15
_M = 1 << SCALE_BITS
_LOW = 1 << 16  # states live in [2^16, 2^32)
_SYMBOLS_PER_LANE = 4096  # lanes = n / 4096: final states cost 32 / 4096 < 0.01 bits per symbol


def shannon_bits(symbols: np.ndarray) -> float:
    """n times the empirical entropy of `symbols`: the least bits any order-0 coder can reach."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0:
        return 0.0
    counts = np.unique(symbols, return_counts=True)[1].astype(np.float64)
    p = counts / symbols.size
    return float(-(counts * np.log2(p)).sum())


def quantize_frequencies(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to 2^15, at least 1 for every symbol that occurs."""
    counts = np.asarray(counts, dtype=np.int64)
    freqs = np.where(counts > 0, np.maximum(1, np.floor(counts * _M / counts.sum())), 0).astype(np.int64)
    excess = int(freqs.sum()) - _M  # > 0 only through the max(1, .) of rare symbols
    while excess > 0:  # take it from the largest frequencies, none below 1 (a pass per 1 taken from each)
        order = np.argsort(-freqs, kind="stable")[:excess]
        order = order[freqs[order] > 1]
        freqs[order] -= 1
        excess -= len(order)
    freqs[np.argmax(freqs)] -= excess  # excess <= 0 here: the rounding remainder goes to the commonest
    return freqs


def rans_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """Code unsigned `symbols` (< alphabet <= 2^15) with an order-0 static model."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if not 1 <= alphabet <= _M:
        raise ValueError(f"rANS alphabet must be in 1..{_M}, got {alphabet}")
    counts = np.bincount(symbols, minlength=alphabet)[:alphabet] if symbols.size else np.ones(alphabet, np.int64)
    freqs = quantize_frequencies(counts)
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    lanes = int(np.clip(symbols.size // _SYMBOLS_PER_LANE, 1, 65535))
    steps = -(-symbols.size // lanes)
    padded = np.full(steps * lanes, int(np.argmax(freqs)), dtype=np.int64)
    padded[:symbols.size] = symbols
    grid = padded.reshape(steps, lanes)  # (steps, lanes)
    state = np.full(lanes, _LOW, dtype=np.uint64)
    words = []
    for step in range(steps - 1, -1, -1):  # rANS encodes backwards so that decoding runs forwards
        freq = freqs[grid[step]].astype(np.uint64)
        emit = state >= (np.uint64((_LOW >> SCALE_BITS) << 16) * freq)
        if emit.any():
            words.append((state[emit] & np.uint64(0xFFFF))[::-1])
            state[emit] >>= np.uint64(16)
        state = ((state // freq) << np.uint64(SCALE_BITS)) + state % freq + starts[grid[step]].astype(np.uint64)
    stream = np.concatenate(words)[::-1] if words else np.zeros(0, np.uint64)
    header = np.concatenate([[alphabet], freqs]).astype("<u2").tobytes()
    return (header + np.array([lanes], "<u4").tobytes() + state.astype("<u4").tobytes()
            + stream.astype("<u2").tobytes())


def rans_decode(payload: bytes, count: int) -> np.ndarray:
    """Inverse of `rans_encode`; raises ValueError when the stream is inconsistent."""
    buf = np.frombuffer(payload, dtype=np.uint8)
    if buf.size < 2:
        raise ValueError("rANS stream shorter than its header")
    alphabet = int(buf[:2].view("<u2")[0])
    pos = 2 + 2 * alphabet
    if alphabet < 1 or buf.size < pos + 4:
        raise ValueError("rANS frequency table truncated or empty")
    freqs = buf[2:pos].view("<u2").astype(np.int64)
    lanes = int(buf[pos:pos + 4].view("<u4")[0])
    pos += 4
    if freqs.sum() != _M or lanes < 1 or buf.size < pos + 4 * lanes or (buf.size - pos) % 2:
        raise ValueError("rANS header is inconsistent (frequencies, lanes or length)")
    state = buf[pos:pos + 4 * lanes].view("<u4").astype(np.uint64)
    stream = buf[pos + 4 * lanes:].view("<u2").astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    slot_symbol = np.repeat(np.arange(alphabet), freqs)  # (2^15,): which symbol owns each slot
    steps = -(-count // lanes)
    out = np.empty((steps, lanes), dtype=np.int64)  # (steps, lanes)
    read = 0
    for step in range(steps):
        slot = (state & np.uint64(_M - 1)).astype(np.int64)
        sym = slot_symbol[slot]
        out[step] = sym
        state = freqs[sym].astype(np.uint64) * (state >> np.uint64(SCALE_BITS)) + (slot - starts[sym]).astype(np.uint64)
        need = state < _LOW
        n_need = int(need.sum())
        if n_need:
            if read + n_need > stream.size:
                raise ValueError("rANS stream ends early")
            state[need] = (state[need] << np.uint64(16)) | stream[read:read + n_need]
            read += n_need
    if read != stream.size or (state != _LOW).any():
        raise ValueError("rANS stream does not decode to its start state (corrupt)")
    return out.reshape(-1)[:count]


def zstd_compress(data: bytes) -> bytes:
    """zstandard at level 19 (a well-kept general-purpose compressor, PyPI `zstandard`)."""
    return zstandard.ZstdCompressor(level=19).compress(data)


def zstd_decompress(data: bytes, size: int) -> bytes:
    """Decompress to exactly `size` bytes (never more: a corrupt frame cannot blow up memory)."""
    out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if len(out) != size:
        raise ValueError(f"zstd stream decodes to {len(out)} bytes, expected {size}")
    return out
