"""The bit engines on packed-and-loaded XNOR-Net models: same logits as the loaded model, fused blocks."""
import pytest
import torch
from torch import nn

import deepshrink
from deepshrink import kernels
from deepshrink.kernels.layers import BitConv2d
from deepshrink.runtime import get_engine
from deepshrink.runtime.bits_engine import to_bits

if kernels.native() is None:
    pytest.skip(f"no native bit kernels here: {kernels.unavailable_reason()}", allow_module_level=True)

ENGINES = [pytest.param(f"bits-{path}", marks=pytest.mark.skipif(
    path not in kernels.supported_paths(), reason=f"this CPU lacks the instructions of the {path} path"))
    for path in kernels.PATHS]


def packed_and_loaded(tmp_path, method, params):
    """A ResNet-20 (4 classes) through `method` with no training, packed, loaded, and its BatchNorms given
    random statistics (so that folding them into the epilogue is tested, not the identity)."""
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=4)
    data = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))]
    result = deepshrink.compress(model, method, train_data=data, overrides=[
        "train.epochs=0", *[f"params.{k}={v}" for k, v in params.items()]])
    deepshrink.pack(result.model, tmp_path / "m.dsz")
    loaded = deepshrink.load(tmp_path / "m.dsz").eval()
    gen = torch.Generator().manual_seed(1)
    for bn in loaded.modules():
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            bn.weight.data.uniform_(0.5, 1.5, generator=gen)
            bn.bias.data.normal_(0, 0.5, generator=gen)
    return loaded, tmp_path / "m.dsz"


@pytest.fixture(scope="module")
def xnor_no_k(tmp_path_factory):
    return packed_and_loaded(tmp_path_factory.mktemp("xnor"), "xnor", {"scaling_map": "false"})


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_gives_the_loaded_models_logits(engine, xnor_no_k):
    model, _ = xnor_no_k
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
    runner = get_engine(engine).prepare(model, x[:1], threads=1)
    assert torch.allclose(runner(x), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # preparing leaves the user's model untouched


def test_each_block_folds_into_two_native_layers_exchanging_bits(xnor_no_k):
    model, _ = xnor_no_k
    gm = to_bits(model, "portable")
    bit_layers = [m for m in gm.modules() if isinstance(m, BitConv2d)]
    assert len(bit_layers) == 18  # every block conv; the stem conv and fc stay float
    for block in (m for m in gm.modules() if isinstance(m, nn.Module) and hasattr(m, "conv2")):
        assert not block.conv1.out_float and block.conv2.packed_input and block.conv1.relu
        assert block.conv2.relu and block.conv2.out_float
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert not any(t.startswith("layer") and t.rsplit(".", 1)[-1].startswith(("bn", "relu")) for t in called)


def test_resident_weights_stay_near_the_packed_file(xnor_no_k):
    model, path = xnor_no_k
    runner = get_engine("bits-portable").prepare(model, torch.randn(1, 3, 16, 16))
    assert runner.resident_bytes() <= 1.2 * path.stat().st_size


@pytest.mark.parametrize("engine", ENGINES)
def test_the_whole_resnet_runs_as_one_native_plan_with_the_fx_graphs_logits(engine, xnor_no_k):
    model, _ = xnor_no_k
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    runner = get_engine(engine).prepare(model, x[:1], threads=2)
    assert runner.plan is not None and runner.module is None  # the graph is dropped, only the plan stays
    with torch.inference_mode():
        per_layer = to_bits(model, engine.removeprefix("bits-"))(x)
    assert torch.allclose(runner(x), per_layer, rtol=1e-5, atol=1e-5)
    assert torch.allclose(runner(x[:1]), per_layer[:1], rtol=1e-5, atol=1e-5)  # workspaces reused across batches


@pytest.mark.parametrize("engine", ENGINES)
def test_scaling_map_k_is_applied(engine, tmp_path):
    model, _ = packed_and_loaded(tmp_path, "xnor", {"scaling_map": "true"})
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    runner = get_engine(engine).prepare(model, x[:1])
    assert runner.plan is None  # K is not in the native plan: the fx graph runs it
    assert torch.allclose(runner(x), expected, rtol=1e-4, atol=1e-4)


def test_binary_weights_with_float_inputs_are_left_to_the_integer_engine(tmp_path):
    model, _ = packed_and_loaded(tmp_path, "bwn", {})
    assert get_engine("bits-portable").unsupported_reason(model).startswith("no layer has binary inputs")


@pytest.mark.parametrize("asymmetric", [False, True])
def test_ternary_weights_with_binary_inputs_match_the_float_layer(asymmetric):
    from deepshrink.nn import CompressedConv2d, EncodedWeight
    from deepshrink.quant.act_quant import XNORActivation

    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(-1, 2, (12, 70, 3, 3), generator=gen, dtype=torch.int8)
    pos = torch.rand(12, generator=gen) + 0.5
    neg = torch.rand(12, generator=gen) + 0.5 if asymmetric else pos.clone()
    enc = EncodedWeight("ternary", (12, 70, 3, 3), codes=codes, params={"pos_scale": pos, "neg_scale": neg})
    act = XNORActivation(70, (3, 3), (2, 2), (1, 1), scaling_map=False).eval()
    layer = CompressedConv2d(70, 12, 3, stride=2, padding=1, bias=True, encoded=enc, input_quant=act).eval()
    layer.bias.data.normal_(generator=gen)
    x = torch.randn(2, 70, 9, 7, generator=gen)
    with torch.no_grad():
        expected = layer(x)
    assert torch.allclose(BitConv2d.from_compressed(layer, "portable")(x), expected, rtol=1e-5, atol=1e-4)


def test_deepshrink_speed_lists_the_bit_engines_for_an_xnor_file(xnor_no_k, capsys):
    """`deepshrink speed` prepares every engine the same way (with calibration images): the bit engines
    take part beside the float references."""
    import json

    from deepshrink.cli import main

    _, path = xnor_no_k
    assert main(["speed", str(path), "--batch", "1", "--rounds", "2", "--input-shape", "3", "16", "16",
                 "--engine", *[p.values[0] for p in ENGINES if not p.marks[0].args[0]], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    engines = {row["engine"] for row in rows}
    assert {"torch-fp32", "onnxruntime-fp32"} <= engines and any(e.startswith("bits-") for e in engines)


@pytest.mark.parametrize("engine", ENGINES)
def test_xnor_transformer_block_on_tokens_runs_on_the_bits(engine, tmp_path):
    """Binary Linear layers on (B, T, C) tokens, in a model `load` rebuilt from its traced graph (not the
    zoo): the attention projections and the MLP run natively, with the loaded model's outputs."""
    class Attention(nn.Module):  # (B, T, 6) tokens -> (B, 4)
        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Linear(6, 16), nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, num_heads=2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            h = self.norm(self.embed(x))
            return self.head((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))

    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 5, 6, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)]
    torch.manual_seed(0)
    result = deepshrink.compress(Attention(), "xnor", train_data=data, calib_data=data, overrides=[
        "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4"])
    deepshrink.pack(result.model.eval(), tmp_path / "block.dsz")
    loaded = deepshrink.load(tmp_path / "block.dsz")
    runner = get_engine(engine).prepare(loaded, data[0][0], threads=1)
    assert sum(isinstance(m, BitConv2d) for m in runner.module.modules()) >= 4  # q, k, v, out at least
    with torch.no_grad():
        for tokens, _ in data:
            assert (runner(tokens) - loaded(tokens)).abs().max().item() < 1e-5
