"""Entropy stage: rANS is lossless, reaches the Shannon bound of ternary codes, and is rejected when corrupt."""
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.packing.entropy import quantize_frequencies, rans_decode, rans_encode, shannon_bits
from deepshrink.packing.payload import PayloadReader, PayloadWriter


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 20_000), alphabet=st.integers(1, 300), skew=st.floats(0.1, 5), seed=st.integers(0, 2**31))
def test_rans_round_trip_is_exact(count, alphabet, skew, seed):
    rng = np.random.default_rng(seed)
    weights = rng.random(alphabet) ** skew
    symbols = rng.choice(alphabet, count, p=weights / weights.sum())
    np.testing.assert_array_equal(rans_decode(rans_encode(symbols, alphabet), count), symbols)


def test_shannon_bits_equal_n_times_scipy_entropy():
    symbols = np.random.default_rng(0).choice(5, 10_000, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    counts = np.bincount(symbols)
    assert shannon_bits(symbols) == pytest.approx(10_000 * scipy.stats.entropy(counts, base=2), rel=1e-9)


def test_quantized_frequencies_sum_to_the_scale_and_keep_rare_symbols():
    freqs = quantize_frequencies(np.array([10**6, 1, 0, 5]))
    assert freqs.sum() == 1 << 15 and freqs[1] >= 1 and freqs[2] == 0


@pytest.mark.parametrize("zero_fraction", [0.3, 0.5, 0.7, 0.9, 0.97])
def test_ternary_codes_entropy_coded_within_0_05_bits_per_weight_of_their_entropy(zero_fraction):
    count = 64 * 64 * 9  # a ResNet-20 stage-3 conv
    rng = np.random.default_rng(1)
    side = (1 - zero_fraction) / 2
    trits = rng.choice(3, count, p=[side, zero_fraction, side])  # symbol = code + 1
    writer = PayloadWriter(entropy=True)
    ref = writer.stream(trits, 2, 3)
    entropy_per_weight = scipy.stats.entropy(np.bincount(trits), base=2)
    achieved = 8 * ref["n"] / count
    assert ref["codec"] == "rans"
    assert achieved - entropy_per_weight <= 0.05
    assert ref["h"] == pytest.approx(count * entropy_per_weight, abs=0.1)
    decoded = PayloadReader(writer.blobs()).stream(ref, "w", count, 2, 3)
    np.testing.assert_array_equal(decoded, trits)


def test_entropy_stage_keeps_raw_bits_when_coding_would_not_save_bytes():
    uniform = np.random.default_rng(2).integers(0, 16, 5000)
    assert PayloadWriter(entropy=True).stream(uniform, 4, 16)["codec"] == "bits"


def test_a_corrupt_rans_stream_is_reported_not_decoded_silently():
    symbols = np.random.default_rng(3).choice(3, 9000, p=[0.1, 0.8, 0.1])
    payload = bytearray(rans_encode(symbols, 3))
    payload[-7] ^= 0x10
    with pytest.raises(ValueError, match="corrupt|ends early"):
        rans_decode(bytes(payload), symbols.size)


@pytest.mark.parametrize("counts", [np.ones(299, np.int64),  # an empty stream's flat model: 110 each rounded
                                    np.r_[10**9, np.ones(20_000, np.int64)],  # rare symbols each forced to 1
                                    np.ones(1 << 15, np.int64)])
def test_quantized_frequencies_stay_positive_when_rare_symbols_overflow_the_scale(counts):
    freqs = quantize_frequencies(counts)
    assert freqs.sum() == 1 << 15 and (freqs >= 1).all()


def test_empty_stream_round_trips_for_any_alphabet():
    for alphabet in (1, 2, 299, 300):
        assert rans_decode(rans_encode(np.zeros(0, np.int64), alphabet), 0).size == 0
