"""A kind added as one class, registered here and nowhere else: the packer, the loader, ONNX export, the
integer engine and the bit kernels take it through their generic paths, with no line of theirs naming it."""
import pytest
import torch
from torch import nn

from deepshrink import kernels
from deepshrink.encodings import ENCODINGS, CodedEncoding, IntegerForm, SignPlane, per_channel, register_encoding
from deepshrink.encodings.checks import check_int
from deepshrink.encodings.weight import bcast
from deepshrink.kernels.layers import BitConv2d, weight_reason
from deepshrink.nn import CompressedConv2d, EncodedWeight, compress_layer
from deepshrink.packing import load, save
from deepshrink.packing.onnx_export import export_onnx
from deepshrink.quant.act_quant import XNORActivation
from deepshrink.runtime.qdq import weight_integer_form
from deepshrink.runtime.qdq_graph import integer_obstacle


class SymmetricInt(CodedEncoding):
    """Toy kind: signed codes -(2^(bits-1) - 1) .. 2^(bits-1) - 1, W = scale * c, one scale per filter.
    At 2 bits the codes are {-1, 0, 1}: one ternary plane for the bit kernels."""

    name = "toy_symmetric"
    param_names = ("scale",)
    per_filter_params = ("scale",)

    def validate(self, weight):
        if not (weight.bits and 2 <= weight.bits <= 8):
            raise ValueError(f"toy_symmetric encoding needs bits in 2..8, got {weight.bits}")

    def code_range(self, weight):
        half = 2 ** (weight.bits - 1) - 1
        return -half, half

    def dequantize(self, weight):
        return bcast(weight.params["scale"], weight.shape) * weight.codes.reshape(weight.shape).float()

    def integer_form(self, weight):
        scale = weight.params["scale"].float()
        return IntegerForm(weight.codes.reshape(weight.shape).long(), torch.zeros(1, dtype=torch.long), scale, scale)

    def sign_planes(self, weight):
        if weight.bits != 2:
            return None
        scale = per_channel(weight.params["scale"], weight.shape[0])
        return [SignPlane(weight.codes.reshape(weight.shape), True, scale)]

    def read_fields(self, meta, what):
        return {**super().read_fields(meta, what), "bits": check_int(meta.get("bits"), what + " bits", 2, 8)}


@pytest.fixture
def toy_kind():
    """SymmetricInt registered for one test (the registry conformance tests must not see it)."""
    register_encoding(SymmetricInt)
    try:
        yield SymmetricInt.name
    finally:
        del ENCODINGS[SymmetricInt.name]


def _toy(shape, bits, seed):
    gen = torch.Generator().manual_seed(seed)
    half = 2 ** (bits - 1) - 1
    codes = torch.randint(-half, half + 1, shape, generator=gen, dtype=torch.int8)
    scale = torch.rand(shape[0], generator=gen) * 0.1 + 0.01  # (out,)
    return EncodedWeight(SymmetricInt.name, shape, codes=codes, bits=bits, params={"scale": scale})


def _model(conv_bits=4, fc_bits=2):
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
    return nn.Sequential(compress_layer(conv, _toy(tuple(conv.weight.shape), conv_bits, 1)), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         compress_layer(fc, _toy(tuple(fc.weight.shape), fc_bits, 2))).eval()


def test_a_new_kind_packs_loads_and_exports_to_onnx_as_integers(toy_kind, tmp_path):
    model = _model()
    save(model, tmp_path / "toy.dsz")
    loaded = load(tmp_path / "toy.dsz").eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert [m.encoded.kind for m in loaded.modules() if hasattr(m, "encoded")] == [toy_kind, toy_kind]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    info = export_onnx(tmp_path / "toy.dsz", tmp_path / "toy.onnx", input_shape=(3, 8, 8))
    assert (info["integer_layers"], info["gather_layers"], info["float_layers"]) == (2, 0, {})
    assert info["max_abs_diff"] <= 1e-5 * max(1.0, info["max_abs_output"])


def test_a_new_kind_meets_the_integer_engine_with_its_own_integer_form(toy_kind):
    model = _model()
    assert integer_obstacle(model) is None
    conv = model[0]
    q, scale = weight_integer_form(conv.encoded)
    assert q.dtype == torch.int8 and torch.equal(q.float() * scale.reshape(-1, 1, 1, 1), conv.encoded.dequantize())


def test_a_new_kind_runs_on_the_bit_kernels_where_it_gives_sign_planes(toy_kind):
    if kernels.native() is None:
        pytest.skip(f"no native bit kernels here: {kernels.unavailable_reason()}")
    gen = torch.Generator().manual_seed(4)
    act = XNORActivation(16, (3, 3), (1, 1), (1, 1), scaling_map=False).eval()
    layer = CompressedConv2d(16, 6, 3, padding=1, bias=True, encoded=_toy((6, 16, 3, 3), 2, 5), input_quant=act)
    layer.eval().bias.data.normal_(generator=gen)
    x = torch.randn(2, 16, 5, 5, generator=gen)
    with torch.no_grad():
        expected = layer(x)
    assert torch.allclose(BitConv2d.from_compressed(layer, "portable")(x), expected, rtol=1e-5, atol=1e-4)
    wide = CompressedConv2d(16, 6, 3, padding=1, encoded=_toy((6, 16, 3, 3), 4, 5), input_quant=act)
    assert "not as +-1 planes" in weight_reason(wide)
