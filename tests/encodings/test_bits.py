"""Bit packing: every width, base-3 and sparse positions round-trip exactly at their stated size."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.encodings.bits import (decode_positions, encode_positions, pack_base3, pack_bits, packed_nbytes,
                                    unpack_base3, unpack_bits)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 16), count=st.integers(0, 3000), seed=st.integers(0, 2**31))
def test_fixed_width_round_trip_is_exact_at_ceil_n_bits_over_8_bytes(width, count, seed):
    symbols = np.random.default_rng(seed).integers(0, 1 << width, count)
    packed = pack_bits(symbols, width)
    assert packed.dtype == np.uint8 and packed.size == (count * width + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, width, count), symbols)


def test_pack_bits_layout_is_lsb_first():
    assert pack_bits(np.array([3, 0, 2, 1]), 2).tolist() == [0b01100011]
    assert pack_bits(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b00001101, 0b1]


def test_chunked_packing_matches_across_the_chunk_boundary():
    symbols = np.random.default_rng(0).integers(0, 8, (1 << 20) + 13)
    np.testing.assert_array_equal(unpack_bits(pack_bits(symbols, 3), 3, symbols.size), symbols)


def test_pack_bits_rejects_symbols_wider_than_the_width():
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(ValueError, match="need 1 bytes"):
        unpack_bits(np.zeros(2, np.uint8), 2, 3)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 2000), seed=st.integers(0, 2**31))
def test_base3_packs_five_trits_per_byte(count, seed):
    trits = np.random.default_rng(seed).integers(0, 3, count)
    packed = pack_base3(trits)
    assert packed.size == -(-count // 5)  # 1.6 bits per trit
    np.testing.assert_array_equal(unpack_base3(packed, count), trits)


def test_base3_rejects_a_byte_above_242():
    with pytest.raises(ValueError, match="exceeds 242"):
        unpack_base3(np.array([243], np.uint8), 5)


@settings(max_examples=50, deadline=None)
@given(numel=st.integers(1, 5000), density=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_positions_round_trip_and_pick_the_smaller_coding(numel, density, seed):
    mask = np.random.default_rng(seed).random(numel) < density
    method, width, symbols = encode_positions(mask)
    np.testing.assert_array_equal(decode_positions(method, width, symbols, numel), mask)
    assert symbols.size * width <= numel  # never worse than the bitmap
    if method == "delta":
        assert symbols.max(initial=0) < 1 << width


def test_very_sparse_masks_use_delta_indices_dense_ones_a_bitmap():
    mask = np.zeros(100_000, bool)
    mask[::97] = True  # 1% kept, gaps of 96: 7-bit deltas beat a 100,000-bit bitmap
    method, width, symbols = encode_positions(mask)
    assert (method, width, symbols.size) == ("delta", 7, mask.sum())
    assert encode_positions(np.random.default_rng(0).random(10_000) < 0.5)[0] == "bitmap"


def test_delta_escapes_handle_gaps_longer_than_the_width():
    mask = np.zeros(10_000, bool)
    mask[[0, 1, 2, 9_999]] = True
    method, width, symbols = encode_positions(mask)
    assert method == "delta"
    np.testing.assert_array_equal(decode_positions(method, width, symbols, mask.size), mask)
    assert packed_nbytes(symbols.size, width) < mask.size // 8
