"""profile(): MACs against hand counts and published figures, BOPs and bytes at each layer's precision."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.analysis import profile
from deepshrink.nn import CompressedConv2d, CompressedLinear, EncodedWeight


@functools.lru_cache(maxsize=None)
def zoo_model(name: str) -> nn.Module:
    """Registered models with default arguments, built once per session (profile leaves them unchanged)."""
    return deepshrink.create_model(name)


def test_conv_and_linear_macs_match_hand_count():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(8 * 5 * 5, 6))
    report = profile(model, input_size=(4, 9, 9))
    macs = {row.name: row.macs for row in report.layers}
    assert macs["0"] == 8 * 5 * 5 * 4 * 3 * 3  # out channels x out positions x (C_in x k x k)
    assert macs["2"] == 8 * 5 * 5 * (8 // 4) * 3 * 3  # grouped: C_in / groups per output
    assert macs["4"] == 6 * 200
    assert report.totals["params"] == sum(p.numel() for p in model.parameters())
    assert report.totals["bytes"] == 4 * report.totals["params"]


def test_a_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert profile(Twice(), input_size=(5,)).totals["macs"] == 2 * 25


@pytest.mark.parametrize("name,size,macs,rel", [
    ("resnet18", 224, 1.82e9, 0.005),  # He et al. 2016 Table 1: 1.8 GFLOPs (multiply-adds)
    ("resnet50", 224, 4.1e9, 0.01),
    ("resnet20", 32, 41e6, 0.02),  # 40.55 M with option A
])
def test_published_mac_figures(name, size, macs, rel):
    report = profile(zoo_model(name), input_size=(3, size, size))
    assert report.totals["macs"] == pytest.approx(macs, rel=rel)


def test_resnet20_option_a_totals():
    totals = profile(zoo_model("resnet20")).totals
    assert totals["params"] == pytest.approx(0.27e6, rel=0.01)
    assert totals["macs"] == 40_551_040
    assert totals["bops"] == totals["macs"] * 32 * 32


@pytest.mark.parametrize("name", deepshrink.list_models())
def test_profile_counts_every_parameter_of_every_model(name):
    model = zoo_model(name)
    channels, height, width = model.default_input_size
    size = (channels, min(height, 64), min(width, 64)) if name not in ("lenet300", "vgg_small") else None
    report = profile(model, input_size=size)
    assert report.totals["params"] == sum(p.numel() for p in model.parameters())
    assert report.totals["macs"] > 0


def test_bops_use_weight_and_activation_bits():
    def layer(weight_bits=None, act_bits=None):
        conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        if weight_bits is not None:
            conv.weight_bits, conv.act_bits = weight_bits, act_bits
        return nn.Sequential(conv)

    binary = profile(layer(1, 1), input_size=(3, 8, 8)).layers[0]
    full = profile(layer(), input_size=(3, 8, 8)).layers[0]
    assert binary.macs == full.macs == 4 * 64 * 27
    assert binary.bops == binary.macs
    assert full.bops == full.macs * 32 * 32
    assert binary.bytes == math.ceil(4 * 27 / 8)  # QAT weight_bits=1: one bit per weight
    assert full.bytes == 4 * 27 * 4


class _ActQuant(nn.Module):
    bits = 4

    def forward(self, x):
        return x


def _compressed_linear(encoded, input_quant=None):
    return nn.Sequential(CompressedLinear.from_linear(nn.Linear(16, 8), encoded, input_quant))


def test_encoded_weights_set_bits_and_bytes():
    shape = (8, 16)
    scale = torch.ones(8)  # per-output-channel scale: 8 float32
    codes = torch.randint(0, 2, shape)
    binary = _compressed_linear(EncodedWeight("binary", shape, codes, {"scale": scale}), _ActQuant())
    row = profile(binary, input_size=(16,)).layers[0]
    assert (row.weight_bits, row.act_bits) == (1, 4)
    assert row.params == 8 * 16 + 8
    assert row.bops == 8 * 16 * 1 * 4
    assert row.bytes == 8 * 16 // 8 + 8 * 4 + 8 * 4  # codes + scales + float bias

    ternary = EncodedWeight("ternary", shape, torch.randint(-1, 2, shape),
                            {"pos_scale": torch.ones(1), "neg_scale": torch.ones(1)})
    assert profile(_compressed_linear(ternary), input_size=(16,)).layers[0].weight_bits == 2

    uniform = EncodedWeight("uniform", shape, torch.randint(0, 8, shape),
                            {"scale": torch.ones(1), "zero_point": torch.zeros(1)}, bits=3)
    row = profile(_compressed_linear(uniform), input_size=(16,)).layers[0]
    assert row.weight_bits == 3
    assert row.bytes == 8 * 16 * 3 // 8 + 4 + 4 + 8 * 4


def test_pq_bits_per_weight_and_codebook_bytes():
    # 3x3 conv, row layout, d = 9 (one kernel per block), K = 16 centroids, one codebook.
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    codebook = torch.randn(1, 16, 9)  # (S, K, d)
    encoded = EncodedWeight("pq", (8, 4, 3, 3), torch.randint(0, 16, (8, 4)), {"codebook": codebook},
                            layout="row")
    row = profile(nn.Sequential(CompressedConv2d.from_conv(conv, encoded)), input_size=(4, 6, 6)).layers[0]
    assert row.weight_bits == pytest.approx(4 / 9)  # ceil(log2 16) bits per block of 9 weights
    assert row.bytes == 8 * 4 * 4 // 8 + 16 * 9 * 4  # 32 codes of 4 bits + float32 codebook


def test_sparse_counts_kept_weights_and_mask():
    shape = (8, 16)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, :4] = True  # 32 of 128 kept
    inner = EncodedWeight("uniform", shape, torch.randint(0, 256, shape),
                          {"scale": torch.ones(1), "zero_point": torch.zeros(1)}, bits=8)
    sparse = EncodedWeight("sparse", shape, mask=mask, inner=inner)
    row = profile(_compressed_linear(sparse), input_size=(16,)).layers[0]
    assert row.weight_bits == 8
    # the packer's index: gaps between kept positions at 3 bits, 7 = "skip 7" (a row's gap of 12 is 7 + 5):
    # 4 symbols for row 0, 5 for each of the other 7 rows, 39 x 3 = 117 bits = 15 bytes (a bitmap: 16)
    index_bytes = math.ceil((4 + 7 * 5) * 3 / 8)
    assert row.bytes == index_bytes + 32 * 8 // 8 + 4 + 4 + 8 * 4  # index + kept codes + scale/zp + bias


def test_deepshrink_macs_is_honoured_and_children_not_double_counted():
    class HalfGated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            return self.conv(x)

        def deepshrink_macs(self, inputs, output):  # for the whole batch: half the output channels
            return inputs[0].shape[0] * 2 * 2 * output.shape[2] * output.shape[3]

    model = nn.Sequential(HalfGated())
    report = profile(model, inputs=torch.randn(5, 2, 3, 3))
    assert report.totals["macs"] == 2 * 2 * 9  # per sample, the conv's dense 4*2*9 is not added
    assert {row.name for row in report.layers} == {"0", "0.conv"}


def test_inference_form_buffers_of_packable_modules_are_parameters():
    from deepshrink.nn import Packable

    class FoldedLinear(Packable, nn.Module):  # e.g. an FBS block: folded weights kept as buffers
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.ones(3, 4))
            self.register_buffer("scratch", torch.ones(100), persistent=False)
            self.bn = nn.BatchNorm1d(3)  # running statistics are not parameters

        def forward(self, x):
            return self.bn(x @ self.weight.T)

    report = profile(nn.Sequential(FoldedLinear()), inputs=torch.randn(2, 4))
    assert {row.name: row.params for row in report.layers} == {"0": 12, "0.bn": 6}
    assert report.totals["bytes"] == 4 * 18


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_counts_its_products_and_multihead_attention_its_projections(batch_first):
    from deepshrink.nn import SplitAttention

    class CrossAttention(nn.Module):
        def __init__(self, attention):
            super().__init__()
            self.attn = attention

        def forward(self, x):  # (B, 12) -> 5 queries over 7 keys of 8 channels, the key called by keyword
            query, key = x[:, :5 * 8].reshape(-1, 5, 8), x.reshape(-1, 12, 8)[:, 5:]  # (B, 5, 8), (B, 7, 8)
            if not batch_first:
                query, key = query.transpose(0, 1), key.transpose(0, 1)  # (T, B, C)
            return self.attn(query, key=key, value=key, need_weights=False)[0]

    torch.manual_seed(0)
    fused = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    products = 2 * 5 * 7 * 8  # Q K^T and weights @ V: T x S x C each
    projections = 5 * 8 * 8 + 7 * 8 * 8 + 7 * 8 * 8 + 5 * 8 * 8  # q, k, v, out
    assert profile(CrossAttention(fused), input_size=(96,)).totals["macs"] == products + projections
    report = profile(CrossAttention(SplitAttention.from_float(fused)), input_size=(96,))
    rows = {row.name: row for row in report.layers}
    assert rows["attn"].macs == products and rows["attn.k_proj"].macs == 7 * 8 * 8
    assert report.totals["macs"] == products + projections
    assert rows["attn"].weight_bits == rows["attn"].act_bits == 32  # activations times activations
