"""Every registered encoding kind keeps its own rules consistent: file round trip, exact size, integer and
ONNX forms, the bit kernels' sign planes, resident form. A new kind fails here until it has an example below."""
import math

import numpy as np
import pytest
import torch

from deepshrink.encodings import (ENCODINGS, ByteCounter, EncodedWeight, decode_weight, describe, encode_weight,
                                  encoding_named, kinds, register_encoding)
from deepshrink.nn import ResidentWeight
from deepshrink.packing.payload import PayloadReader, PayloadWriter

SHAPE = (6, 4, 3, 3)  # (out, in, kh, kw)


def _examples() -> dict[str, EncodedWeight]:
    """Weights of SHAPE: one per kind, a sparse weight over every other kind, and the 3-symbol alphabets
    that base-3 packing applies to."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda low, high: torch.randint(low, high, SHAPE, generator=gen)  # noqa: E731
    per_filter = torch.rand(SHAPE[0], generator=gen) + 0.1  # (out,)
    codebook = (torch.randn(2, 5, 9, generator=gen) * 0.1).half().float()  # (S, K, d): 2 subspaces, K = 5, d = 9
    dense = {
        "binary": EncodedWeight("binary", SHAPE, rand(0, 2).to(torch.uint8), {"scale": per_filter}),
        "ternary": EncodedWeight("ternary", SHAPE, rand(-1, 2).to(torch.int8),
                                 {"pos_scale": torch.tensor([0.3]), "neg_scale": torch.tensor([0.2])}),
        "uniform": EncodedWeight("uniform", SHAPE, rand(0, 8), {"scale": per_filter, "zero_point": torch.tensor([3.5])},
                                 bits=3),
        "pow2": EncodedWeight("pow2", SHAPE, rand(-3, 4).to(torch.int8), {"alpha": per_filter}, levels=7),
        "pq": EncodedWeight("pq", SHAPE, torch.randint(0, 5, (6, 4), generator=gen), {"codebook": codebook},
                            layout="row"),
        "float": EncodedWeight("float", SHAPE, params={"values": torch.randn(SHAPE, generator=gen)}),
    }
    mask = torch.rand(SHAPE, generator=gen) > 0.7
    examples = dict(dense)
    examples.update({f"sparse_{kind}": EncodedWeight("sparse", SHAPE, mask=mask, inner=weight)
                     for kind, weight in dense.items()})
    examples["pow2_3_levels"] = EncodedWeight("pow2", SHAPE, rand(-1, 2), {"alpha": torch.tensor([0.5])}, levels=3)
    examples["pq_3_centroids"] = EncodedWeight("pq", (6, 8), torch.randint(0, 3, (6, 2), generator=gen),
                                               {"codebook": torch.randn(1, 3, 4, generator=gen)}, layout="channel")
    return examples


EXAMPLES = _examples()
OPTIONS = [(torch.float32, False), (torch.float16, True), (torch.bfloat16, False)]


def test_every_registered_kind_has_an_example():
    assert set(kinds()) == {weight.kind for weight in EXAMPLES.values()} == set(ENCODINGS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("float_dtype,base3", OPTIONS)
def test_packed_bits_are_the_bytes_the_packer_writes(name, float_dtype, base3):
    weight = EXAMPLES[name]
    writer = PayloadWriter(ternary_base3=base3)
    encode_weight(weight, writer, name, float_dtype)
    written = sum(blob.numel() * blob.element_size() for blob in writer.blobs().values())
    assert weight.packed_bits(float_dtype, base3) == 8 * written


def test_base3_counts_five_trits_a_byte():
    weight = EXAMPLES["pow2_3_levels"]  # 216 codes: 2 bits each (54 bytes) or 44 bytes in base 3, + alpha
    assert weight.packed_bits() == 8 * (216 * 2 // 8 + 4)
    assert weight.packed_bits(ternary_base3=True) == 8 * (math.ceil(216 / 5) + 4)


def test_a_sparse_weight_counts_the_packers_index_not_a_bitmap():
    shape = (1, 1000)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[0, ::100] = True  # 10 kept: gaps of 99 at 7 bits each beat a 1000-bit bitmap
    inner = EncodedWeight("uniform", shape, torch.full(shape, 5), bits=4,
                          params={"scale": torch.ones(1), "zero_point": torch.zeros(1)})
    weight = EncodedWeight("sparse", shape, mask=mask, inner=inner)
    assert weight.packed_bits() == 8 * (math.ceil(10 * 7 / 8) + math.ceil(10 * 4 / 8) + 8)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_file_form_round_trips_exactly(name):
    weight = EXAMPLES[name]
    writer = PayloadWriter()
    meta = encode_weight(weight, writer, name, torch.float32)
    loaded = decode_weight(meta, PayloadReader(writer.blobs()), name, weight.shape)
    assert loaded.kind == weight.kind
    assert torch.equal(loaded.dequantize(), weight.dequantize())
    assert describe(meta).startswith(weight.kind)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_codes_lie_in_their_range_and_integer_form_decodes_to_the_same_weight(name):
    weight = EXAMPLES[name]
    coded = weight.inner if weight.inner is not None else weight
    if coded.encoding.has_codes:
        low, high = coded.code_range()
        assert low <= int(coded.codes.min()) and int(coded.codes.max()) <= high
    else:
        with pytest.raises(ValueError, match="has no codes"):
            coded.code_range()
    form = weight.integer_form()
    if form is not None:
        assert torch.equal(form.dequantize(weight.shape), weight.dequantize())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_onnx_form_builds_the_decoded_weight(name):
    weight = EXAMPLES[name]
    form = weight.encoding.onnx_weight(weight)
    if form is None:  # exported as float: no integer form within 8 bits and no codebook form
        assert weight.integer_form() is None
        return
    kind, build = form
    assert kind in ("integer", "gather")
    torch.testing.assert_close(build(), weight.dequantize(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_weight_without_an_integer_form_says_why(name):
    weight = EXAMPLES[name]
    if weight.integer_form() is None:
        reason = weight.encoding.no_integer_form(weight)
        assert reason.startswith(weight.kind) and "integer codes times a scale" in reason


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sign_planes_sum_to_the_decoded_weight_exactly(name):
    weight = EXAMPLES[name]
    planes = weight.encoding.sign_planes(weight)
    if planes is None:
        return
    for plane in planes:
        allowed = {-1, 0, 1} if plane.ternary else {0, 1}
        assert set(plane.codes.unique().tolist()) <= allowed and plane.codes.shape == weight.shape
        assert plane.scale.dtype == torch.float32 and plane.scale.shape == (weight.shape[0],)
    assert torch.equal(sum(plane.dequantize() for plane in planes), weight.dequantize())


def test_the_bit_kernels_take_binary_ternary_and_3_level_pow2_only():
    planes = {name for name, weight in EXAMPLES.items() if weight.encoding.sign_planes(weight) is not None}
    assert planes == {"binary", "ternary", "pow2_3_levels"}
    ternary = EXAMPLES["ternary"]  # TTQ's two scales: the +1 and the -1 positions as two planes
    assert len(ternary.encoding.sign_planes(ternary)) == 2


def test_only_float_values_are_left_to_an_engine_to_round():
    assert {kind for kind in kinds() if encoding_named(kind).float_values} == {"float"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_resident_form_expands_to_the_same_weight(name):
    weight = EXAMPLES[name]
    assert torch.equal(ResidentWeight.pack(weight).decode(), weight.dequantize())


def test_unknown_kind_and_double_registration_are_refused():
    with pytest.raises(ValueError, match=r"unknown encoding 'int3'; one of \('binary', 'ternary'"):
        EncodedWeight("int3", (2,))
    with pytest.raises(ValueError, match="registered twice"):
        register_encoding(type(encoding_named("binary")))


def test_byte_counter_counts_what_a_writer_appends():
    symbols = np.arange(10) % 3
    counter, writer = ByteCounter(ternary_base3=True), PayloadWriter(ternary_base3=True)
    counter.stream(symbols, 2, 3)
    counter.tensor(torch.zeros(3, dtype=torch.float16))
    assert writer.stream(symbols, 2, 3)["n"] + 6 == counter.nbytes == 2 + 6
