"""Integer forms: every integer encoding is int8 codes times a per-channel scale, bit for bit; each
trained activation quantizer maps to the uint8 grid it rounds to."""
import pytest
import torch

from deepshrink.nn import EncodedWeight
from deepshrink.quant.act_quant import (DoReFaActivation, LSQActivation, PACTActivation, ScaledDoReFaActivation,
                                        XNORActivation)
from deepshrink.runtime.qdq import (SCALE_TOLERANCE, Grid, activation_grid, minmax_grid, saturates, weight_integer_form,
                                   weight_limit)

SHAPE = (6, 4, 3, 3)


def _codes(low, high, seed=0):
    return torch.randint(low, high + 1, SHAPE, generator=torch.Generator().manual_seed(seed))


def _scale(seed=1):
    return torch.rand(SHAPE[0], generator=torch.Generator().manual_seed(seed)) * 0.1 + 0.01


EXACT = {
    "binary": EncodedWeight("binary", SHAPE, codes=_codes(0, 1).to(torch.uint8), params={"scale": _scale()}),
    "ternary": EncodedWeight("ternary", SHAPE, codes=_codes(-1, 1).to(torch.int8),
                             params={"pos_scale": torch.tensor([0.3]), "neg_scale": torch.tensor([0.3])}),
    "uniform8": EncodedWeight("uniform", SHAPE, codes=_codes(0, 255).to(torch.uint8), bits=8,
                              params={"scale": _scale(), "zero_point": torch.full((6,), 128.0)}),
    "uniform4_dorefa": EncodedWeight("uniform", SHAPE, codes=_codes(0, 15).to(torch.uint8), bits=4,
                                     params={"scale": _scale(), "zero_point": torch.tensor([7.5])}),
    "pow2_l7": EncodedWeight("pow2", SHAPE, codes=_codes(-3, 3).to(torch.int8), levels=7,
                             params={"alpha": _scale()}),
    "sparse_pow2": EncodedWeight("sparse", SHAPE, mask=_codes(0, 1, seed=5).bool(), inner=EncodedWeight(
        "pow2", SHAPE, codes=_codes(-2, 2).to(torch.int8), levels=5, params={"alpha": _scale()})),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_integer_form_decodes_to_the_same_weight_bit_for_bit(name):
    encoded = EXACT[name]
    q, scale = weight_integer_form(encoded)
    assert q.dtype == torch.int8 and scale.shape == (SHAPE[0],)
    assert torch.equal(q.float() * scale.reshape(-1, 1, 1, 1), encoded.dequantize())


def test_ttq_two_scales_become_one_int8_grid_within_the_tolerance():
    # 0.3 / 0.2 is exactly 3 / 2; 0.3 / (0.2 sqrt 2) has no small integer ratio; 0.0487 / 0.0485 (a trained
    # ResNet-20 layer's) lies between 1 and 127 / 126, the worst place for a ratio of integers <= 127
    for pos, neg, tolerance in ((0.3, 0.2, 1e-6), (0.3, 0.2 * 2**0.5, SCALE_TOLERANCE), (0.0487, 0.0485, SCALE_TOLERANCE)):
        encoded = EncodedWeight("ternary", SHAPE, codes=_codes(-1, 1).to(torch.int8),
                                params={"pos_scale": torch.tensor([pos]), "neg_scale": torch.tensor([neg])})
        q, scale = weight_integer_form(encoded)
        weight = encoded.dequantize()
        assert q.dtype == torch.int8 and torch.equal(q.sign(), weight.sign())
        assert torch.allclose(q.float() * scale.reshape(-1, 1, 1, 1), weight, rtol=tolerance, atol=0)


def test_ttq_ratio_stays_within_a_saturating_cpus_limit():
    """Without VNNI, p, n <= 64 (8-bit inputs): the worst ratio's scales move by at most twice as much."""
    encoded = EncodedWeight("ternary", SHAPE, codes=_codes(-1, 1).to(torch.int8),
                            params={"pos_scale": torch.tensor([0.0487]), "neg_scale": torch.tensor([0.0485])})
    q, scale = weight_integer_form(encoded, limit=64)
    assert int(q.abs().max()) <= 64
    assert torch.allclose(q.float() * scale.reshape(-1, 1, 1, 1), encoded.dequantize(),
                          rtol=SCALE_TOLERANCE * 127 / 64, atol=0)


def test_weight_limit_keeps_every_uint8_int8_pair_sum_inside_int16():
    for qmax in (1, 3, 15, 127, 255):
        limit = weight_limit(qmax, saturating=True)
        assert 2 * qmax * limit <= 32767 and (limit == 127 or 2 * qmax * (limit + 1) > 32767)
        assert weight_limit(qmax, saturating=False) == 127
    assert weight_limit(255, saturating=True) == 64  # ONNX Runtime's reduce_range: 7-bit weights


def test_codes_beyond_a_saturating_limit_are_refused_saying_why():
    assert torch.equal(weight_integer_form(EXACT["uniform4_dorefa"], limit=64)[0],
                       weight_integer_form(EXACT["uniform4_dorefa"])[0])  # |q| <= 15: unchanged
    reason = weight_integer_form(EXACT["uniform8"], limit=64)
    assert isinstance(reason, str) and "VNNI" in reason and "64" in reason


@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", ["sse2", "avx2", "fma"], True), ("x86_64", ["avx2", "avx512f", "avx512bw"], True),
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], False), ("x86_64", ["avx2", "avx_vnni"], False),
    ("AMD64", None, True), ("aarch64", ["asimd"], False), ("arm64", None, False)])
def test_pairs_saturate_on_x86_without_vnni_only(machine, flags, expected):
    assert saturates(machine, flags) is expected


def test_pow2_levels_are_the_integers_0_1_2_4():
    q, _ = weight_integer_form(EXACT["pow2_l7"])
    assert sorted(q.unique().tolist()) == [-4, -2, -1, 0, 1, 2, 4]


@pytest.mark.parametrize("encoded, words", [
    (EncodedWeight("ternary", SHAPE, codes=_codes(-1, 1).to(torch.int8),
                   params={"pos_scale": torch.tensor([1.0]), "neg_scale": torch.tensor([1e-3])}), "no ratio of integers"),
    (EncodedWeight("pow2", SHAPE, codes=_codes(-8, 8).to(torch.int16), levels=17, params={"alpha": _scale()}),
     "beyond int8"),
    (EncodedWeight("pq", SHAPE, codes=torch.zeros(6, 4, dtype=torch.long),
                   params={"codebook": torch.rand(1, 4, 9)}, layout="row"), "not integer codes"),
    (EncodedWeight("uniform", SHAPE, codes=_codes(0, 7).to(torch.uint8), bits=3,
                   params={"scale": _scale(), "zero_point": torch.tensor([3.3])}), "zero point"),
])
def test_encodings_without_an_int8_form_say_why(encoded, words):
    reason = weight_integer_form(encoded)
    assert isinstance(reason, str) and words in reason


def test_activation_quantizers_map_to_their_uint8_grids():
    assert activation_grid(DoReFaActivation(4)) == Grid(1 / 15, 0, 0, 15)
    assert activation_grid(ScaledDoReFaActivation(2, scale=6.0)) == Grid(2.0, 0, 0, 3)
    pact = PACTActivation(4, alpha_init=3.0)
    assert activation_grid(pact) == Grid(pytest.approx(3.0 / 15), 0, 0, 15)
    lsq = LSQActivation(4, signed=True)
    lsq.step.data.fill_(0.5)
    assert activation_grid(lsq) == Grid(0.5, 8, 0, 15)  # codes -8..7 shifted by the zero point 8
    assert not Grid(0.5, 0, 0, 255).clips and Grid(0.5, 0, 0, 15).clips


def test_activations_without_a_uint8_grid_say_why():
    assert "1..8" in activation_grid(DoReFaActivation(16))
    assert "not a uniform" in activation_grid(XNORActivation(4))


def test_minmax_grid_holds_zero_and_the_range():
    grid = minmax_grid(0.0, 5.1)
    assert grid.zero_point == 0 and grid.scale == pytest.approx(5.1 / 255)
    grid = minmax_grid(-1.0, 3.0)
    assert (0 - grid.zero_point) * grid.scale == pytest.approx(-1.0, abs=grid.scale)
