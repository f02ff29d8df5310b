"""SplitAttention computes what nn.MultiheadAttention computes, through four Linear projections, and records
as a traced graph that rebuilds without the model's code."""
import pytest
import torch
from torch import nn

from deepshrink.nn import SplitAttention, split_attention
from deepshrink.packing.graph import build_graph_module, record_graph, trace

HEADS, DIM, BATCH, TARGET, SOURCE = 4, 16, 3, 5, 7


def _random_attention(**kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(DIM, HEADS, **kwargs).eval()
    with torch.no_grad():
        for parameter in attention.parameters():  # no zero biases: each one must land in its projection
            parameter.normal_()
    return attention


def _masks(kind: str) -> dict:
    padding = torch.zeros(BATCH, SOURCE, dtype=torch.bool)
    padding[0, -3:] = True  # the first sequence's last three keys are padding
    causal = torch.ones(TARGET, SOURCE, dtype=torch.bool).triu(1)
    gen = torch.Generator().manual_seed(3)  # the same random masks at every call
    return {"none": {}, "key_padding": {"key_padding_mask": padding},
            "float_attn": {"attn_mask": torch.randn(TARGET, SOURCE, generator=gen)},
            "both": {"attn_mask": causal, "key_padding_mask": padding},
            "per_head": {"attn_mask": torch.rand(BATCH * HEADS, TARGET, SOURCE, generator=gen) > 0.7},
            "causal_hint": {"attn_mask": causal, "is_causal": True}}[kind]


@pytest.mark.parametrize("masks", ["none", "key_padding", "float_attn", "both", "per_head", "causal_hint"])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_outputs_and_weights_equal_the_originals(batch_first, need_weights, masks):
    original = _random_attention(batch_first=batch_first)
    split = SplitAttention.from_float(original)
    gen = torch.Generator().manual_seed(1)
    query, key = torch.randn(BATCH, TARGET, DIM, generator=gen), torch.randn(BATCH, SOURCE, DIM, generator=gen)
    if not batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)  # (T, B, C)
    with torch.no_grad():
        expected = original(query, key, key, need_weights=need_weights, **_masks(masks))
        got = split(query, key, key, need_weights=need_weights, **_masks(masks))
    assert (got[0] - expected[0]).abs().max().item() <= 1e-6
    if need_weights:
        assert (got[1] - expected[1]).abs().max().item() <= 1e-6
    else:
        assert got[1] is None


@pytest.mark.parametrize("options", [{"kdim": 12, "vdim": 10}, {"bias": False}, {"add_bias_kv": True},
                                     {"add_zero_attn": True}])
def test_other_constructor_options_compute_the_same(options):
    original = _random_attention(batch_first=True, **options)
    split = SplitAttention.from_float(original)
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(BATCH, TARGET, DIM, generator=gen)
    key = torch.randn(BATCH, SOURCE, options.get("kdim", DIM), generator=gen)
    value = torch.randn(BATCH, SOURCE, options.get("vdim", DIM), generator=gen)
    with torch.no_grad():
        for need_weights in (True, False):
            expected = original(query, key, value, need_weights=need_weights)[0]
            assert (split(query, key, value, need_weights=need_weights)[0] - expected).abs().max() <= 1e-6


def test_self_attention_and_unbatched_inputs():
    original = _random_attention()
    split = SplitAttention.from_float(original)
    x = torch.randn(TARGET, DIM)  # unbatched (T, C)
    with torch.no_grad():
        expected, weights = original(x, x, x)
        got, got_weights = split(x, x, x)
    assert got.shape == (TARGET, DIM) and (got - expected).abs().max() <= 1e-6
    assert (got_weights - weights).abs().max() <= 1e-6


def test_the_projections_are_linear_layers_holding_the_in_projection():
    original = _random_attention()
    split = SplitAttention.from_float(original)
    assert all(type(split.get_submodule(n)) is nn.Linear for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    q, k, v = original.in_proj_weight.chunk(3)
    assert torch.equal(split.q_proj.weight, q) and torch.equal(split.k_proj.weight, k)
    assert torch.equal(split.v_proj.weight, v) and torch.equal(split.out_proj.weight, original.out_proj.weight)
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in original.parameters())


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x, padding=None):
        return self.norm(x + self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0])


def test_split_attention_replaces_every_multihead_attention_and_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).eval()
    x = torch.randn(BATCH, TARGET, DIM)
    with torch.no_grad():
        expected = model(x)
        split = split_attention(model)
        assert split is model and not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
        assert (model(x) - expected).abs().max() <= 1e-6
    assert type(split_attention(nn.MultiheadAttention(DIM, HEADS))) is SplitAttention


def test_a_transformer_encoder_layer_keeps_its_function_off_the_fused_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(BATCH, TARGET, DIM)
    with torch.no_grad():
        expected = layer(x)
        assert (split_attention(layer)(x) - expected).abs().max() <= 1e-5  # the fused path rounds differently


def test_the_traced_graph_records_attend_by_name_and_rebuilds():
    torch.manual_seed(0)
    model = split_attention(Block().eval())
    record = record_graph(trace(model))
    assert "deepshrink.nn.attention.attend" in [node["target"] for node in record["nodes"]]
    rebuilt = build_graph_module(record)
    rebuilt.load_state_dict(model.state_dict())
    x, padding = torch.randn(BATCH, TARGET, DIM), torch.zeros(BATCH, TARGET, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        assert torch.equal(rebuilt(x, padding), model(x, padding))


def test_a_zoo_model_with_attention_reloads_by_its_name_with_the_attention_split(tmp_path):
    import deepshrink
    from deepshrink.packing.format import read_container
    from deepshrink.registry import MODELS, register_model

    def block_with_head(num_classes=3):
        return nn.Sequential(nn.Linear(DIM, DIM), Block(), nn.Linear(DIM, num_classes))

    block_with_head.__module__ = "deepshrink.models.test_only"  # what the format treats as a zoo model
    register_model("test_attention_block")(block_with_head)
    try:
        torch.manual_seed(0)
        model = deepshrink.create_model("test_attention_block")
        data = [(torch.randn(4, TARGET, DIM), torch.zeros(4, dtype=torch.long))]
        compressed = deepshrink.compress(model, "ldnq", calib_data=data).model
        deepshrink.pack(compressed, tmp_path / "zoo.dsz")
        assert read_container(tmp_path / "zoo.dsz")[0]["arch"]["name"] == "test_attention_block"
        loaded = deepshrink.load(tmp_path / "zoo.dsz")
        assert type(loaded[1].attn) is SplitAttention
        with torch.no_grad():
            assert torch.equal(loaded(data[0][0]), compressed(data[0][0]))
    finally:
        MODELS._entries.pop("test_attention_block")
