"""EncodedWeight decoding against independent element-wise computations, and its layouts."""
import math

import pytest
import torch

from deepshrink.nn import CompressedConv2d, CompressedLinear, EncodedWeight, compress_layer, pq_blocks, pq_unblocks

torch.manual_seed(0)


def test_binary_per_filter():
    codes = torch.randint(0, 2, (3, 2, 3, 3))
    scale = torch.tensor([0.5, 1.0, 2.0])
    w = EncodedWeight("binary", codes.shape, codes, {"scale": scale}).dequantize()
    for o in range(3):
        expected = torch.where(codes[o] == 1, scale[o], -scale[o])
        assert torch.equal(w[o], expected)


def test_ternary_with_asymmetric_scales():
    codes = torch.randint(-1, 2, (4, 5))
    w = EncodedWeight("ternary", codes.shape, codes, {"pos_scale": torch.tensor([0.3]),
                                                    "neg_scale": torch.tensor([0.7])}).dequantize()
    expected = [[0.3 if c == 1 else (-0.7 if c == -1 else 0.0) for c in row] for row in codes.tolist()]
    assert torch.allclose(w, torch.tensor(expected))


def test_uniform_with_zero_point():
    codes = torch.randint(0, 16, (2, 8))
    w = EncodedWeight("uniform", codes.shape, codes, {"scale": torch.tensor([0.1]),
                                                    "zero_point": torch.tensor([7.5])}, bits=4).dequantize()
    assert torch.allclose(w, (codes.float() - 7.5) * 0.1)


@pytest.mark.parametrize("levels,values", [(3, {0, 1, -1}), (5, {0, 1, -1, 2, -2}),
                                           (7, {0, 1, -1, 2, -2, 4, -4})])
def test_pow2_levels_are_zero_and_powers_of_two(levels, values):
    half = (levels - 1) // 2
    codes = torch.arange(-half, half + 1)
    enc = EncodedWeight("pow2", codes.shape, codes, {"alpha": torch.tensor([0.25])}, levels=levels)
    assert set((enc.dequantize() / 0.25).round().int().tolist()) == values
    assert enc.bits == math.ceil(math.log2(levels))
    assert enc.code_range() == (-half, half)


def test_pow2_rejects_even_levels():
    with pytest.raises(ValueError, match="odd levels"):
        EncodedWeight("pow2", (3,), torch.zeros(3), {"alpha": torch.ones(1)}, levels=4)


@pytest.mark.parametrize("layout", ["row", "channel"])
def test_pq_blocks_round_trip(layout):
    w = torch.randn(4, 8, 3, 3)
    blocks = pq_blocks(w, 4 if layout == "channel" else 9, layout)
    assert torch.equal(pq_unblocks(blocks, w.shape, layout), w)


def test_pq_channel_layout_runs_along_input_channels():
    w = torch.randn(2, 4, 1, 2)
    blocks = pq_blocks(w, 4, "channel")  # (out, kh*kw*in/4, 4)
    assert torch.equal(blocks[1, 1], w[1, :, 0, 1])


def test_pq_decodes_with_per_subspace_codebooks():
    codebook = torch.randn(2, 4, 3)  # (S, K, d)
    codes = torch.randint(0, 4, (5, 6))  # 6 blocks per row -> 3 per subspace
    w = EncodedWeight("pq", (5, 18), codes, {"codebook": codebook}, layout="row").dequantize()
    for o in range(5):
        for j in range(6):
            assert torch.equal(w[o, 3 * j:3 * j + 3], codebook[j // 3, codes[o, j]])


def test_sparse_masks_its_inner_encoding():
    values = torch.randn(3, 4)
    mask = torch.rand(3, 4) > 0.5
    enc = EncodedWeight("sparse", values.shape, mask=mask,
                        inner=EncodedWeight("float", values.shape, params={"values": values}))
    assert torch.equal(enc.dequantize(), values * mask)


def test_compressed_layers_compute_with_decoded_weight():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    codes = torch.randint(0, 2, conv.weight.shape)
    enc = EncodedWeight("binary", conv.weight.shape, codes, {"scale": torch.tensor([0.5])})
    layer = compress_layer(conv, enc)
    assert isinstance(layer, CompressedConv2d)
    x = torch.randn(1, 2, 5, 5)
    expected = torch.nn.functional.conv2d(x, enc.dequantize(), conv.bias, padding=1)
    assert torch.allclose(layer(x), expected)
    linear = compress_layer(torch.nn.Linear(4, 2), EncodedWeight("float", (2, 4), params={"values": torch.ones(2, 4)}))
    assert isinstance(linear, CompressedLinear)
    assert torch.allclose(linear(torch.ones(1, 4)), 4 + linear.bias)
