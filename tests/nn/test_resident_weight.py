"""ResidentWeight: codes packed at their width, expanded back exactly, and the layers that hold them."""
import math

import pytest
import torch

from deepshrink.nn import (CompressedConv2d, EncodedWeight, ResidentWeight, compress_layer, decode_weights,
                           release_weights, tensor_nbytes)
from deepshrink.nn.resident import PackedSymbols


@pytest.mark.parametrize("alphabet", [2, 3, 4, 5, 7, 16, 100, 256, 1000, 2**16, 2**20])
def test_symbols_round_trip_at_their_width(alphabet):
    symbols = torch.randint(0, alphabet, (1234,), generator=torch.Generator().manual_seed(alphabet))
    packed = PackedSymbols.pack(symbols, alphabet)
    assert torch.equal(packed.unpack(), symbols)
    width = math.ceil(math.log2(alphabet))
    expected = -(-1234 // 5) if alphabet == 3 else 1234 * 4 if width > 16 else -(-1234 * width // 8)
    assert packed.data.numel() * packed.data.element_size() == expected


def test_sparse_masks_round_trip_as_bitmap_or_gaps():
    gen = torch.Generator().manual_seed(0)
    for keep in (0.0, 0.01, 0.3, 0.9, 1.0):
        mask = torch.rand(5000, generator=gen) < keep
        encoded = EncodedWeight("sparse", (50, 100), mask=mask.reshape(50, 100),
                                inner=EncodedWeight("float", (50, 100), params={"values": torch.ones(50, 100)}))
        assert torch.equal(ResidentWeight.pack(encoded).expand().mask, mask.reshape(50, 100))


def test_bits_layout_is_the_files():
    """Bit-packed symbols use the .dsz "bits" layout (LSB first), so the two can be compared byte for byte."""
    from deepshrink.encodings.bits import pack_bits

    symbols = torch.randint(0, 32, (999,), generator=torch.Generator().manual_seed(0))
    assert PackedSymbols.pack(symbols, 32).data.numpy().tobytes() == pack_bits(symbols.numpy(), 5).tobytes()


def _encodings():
    gen = torch.Generator().manual_seed(0)
    shape = (8, 4, 3, 3)
    mask = torch.rand(shape, generator=gen) > 0.7
    pow2 = EncodedWeight("pow2", shape, codes=torch.randint(-1, 2, shape, generator=gen).to(torch.int8),
                         levels=3, params={"alpha": torch.rand(8, generator=gen)})
    return {
        "binary": EncodedWeight("binary", shape, codes=torch.randint(0, 2, shape, generator=gen).to(torch.uint8),
                                params={"scale": torch.rand(8, generator=gen)}),
        "ternary": EncodedWeight("ternary", shape, codes=torch.randint(-1, 2, shape, generator=gen).to(torch.int8),
                                 params={"pos_scale": torch.tensor([0.3]), "neg_scale": torch.tensor([0.2])}),
        "uniform3": EncodedWeight("uniform", shape, codes=torch.randint(0, 8, shape, generator=gen).to(torch.uint8),
                                  bits=3, params={"scale": torch.rand(8, generator=gen),
                                                  "zero_point": torch.tensor([3.5])}),
        "pow2": pow2,
        "pq": EncodedWeight("pq", shape, codes=torch.randint(0, 16, (8, 4), generator=gen).to(torch.int32),
                            params={"codebook": torch.randn(1, 16, 9, generator=gen).half()}, layout="row"),
        "sparse_float": EncodedWeight("sparse", shape, mask=mask, inner=EncodedWeight(
            "float", shape, params={"values": torch.randn(shape, generator=gen)})),
        "sparse_pow2": EncodedWeight("sparse", shape, mask=mask, inner=pow2),
    }


@pytest.mark.parametrize("kind", list(_encodings()))
def test_expand_gives_the_same_weight(kind):
    encoded = _encodings()[kind]
    resident = ResidentWeight.pack(encoded)
    expanded = resident.expand()
    assert torch.equal(resident.decode(), encoded.dequantize())
    if encoded.codes is not None:
        assert torch.equal(expanded.codes, encoded.codes) and expanded.codes.dtype == encoded.codes.dtype


@pytest.mark.parametrize("kind", list(_encodings()))
def test_resident_bytes(kind):
    """Codes at ceil(log2(alphabet)) bits (base 3 for three symbols); a sparse mask as the file codes it (the
    numpy coder of deepshrink.encodings.bits), its inner weight at the kept entries."""
    from deepshrink.encodings.bits import encode_positions, packed_nbytes

    encoded = _encodings()[kind]
    numel, kept = encoded.numel, int(encoded.mask.sum()) if encoded.mask is not None else encoded.numel
    mask_bytes = 0
    if encoded.mask is not None:
        _, width, symbols = encode_positions(encoded.mask.numpy())
        mask_bytes = packed_nbytes(symbols.size, width)
    expected = {"binary": -(-numel // 8) + 8 * 4, "ternary": -(-numel // 5) + 2 * 4,
                "uniform3": -(-numel * 3 // 8) + 9 * 4, "pow2": -(-numel // 5) + 8 * 4,
                "pq": 8 * 4 * 4 // 8 + 16 * 9 * 2,
                "sparse_float": mask_bytes + kept * 4, "sparse_pow2": mask_bytes + -(-kept // 5) + 8 * 4}
    assert ResidentWeight.pack(encoded).nbytes == expected[kind]


def _layer(kind):
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    return compress_layer(conv, _encodings()[kind])


@pytest.mark.parametrize("kind", list(_encodings()))
def test_resident_layer_computes_what_the_decoded_layer_computes(kind):
    layer = _layer(kind)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    decoded = layer(x)
    release_weights(layer)
    assert layer.is_resident and "weight" not in layer.state_dict()
    assert torch.equal(layer(x), decoded)
    assert torch.equal(layer.weight, _encodings()[kind].dequantize())  # `weight` still reads the float weight


def test_decoded_weights_are_trainable_parameters_and_release_drops_them():
    layer = release_weights(_layer("pow2"))
    resident_bytes = tensor_nbytes(layer)
    decode_weights(layer)
    assert isinstance(layer.weight, torch.nn.Parameter) and layer.weight.requires_grad
    layer(torch.randn(1, 4, 5, 5)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == (8, 4, 3, 3)
    assert tensor_nbytes(layer) == resident_bytes + 8 * 4 * 9 * 4  # the float copy: 4 bytes per weight
    release_weights(layer)
    assert tensor_nbytes(layer) == resident_bytes and not list(n for n, _ in layer.named_parameters() if n == "weight")


def test_changed_float_weight_warns_when_packed():
    layer = decode_weights(_layer("binary"))
    with torch.no_grad():
        layer.weight.add_(1.0)
    with pytest.warns(UserWarning, match="not packed"):
        layer.encoded_tensors()


def test_resident_layer_refuses_weight_assignment():
    layer = release_weights(_layer("ternary"))
    with pytest.raises(AttributeError, match="decode_weight"):
        layer.weight = torch.zeros(8, 4, 3, 3)


def test_codes_move_with_the_layer():
    layer = release_weights(_layer("sparse_pow2")).to(torch.float64)
    assert isinstance(layer, CompressedConv2d)
    assert layer(torch.randn(1, 4, 5, 5, dtype=torch.float64)).dtype == torch.float64
