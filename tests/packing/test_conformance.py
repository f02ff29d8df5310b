"""Every registered method: compress a tiny model -> pack -> load -> the same outputs (the day it lands);
over a transformer block, every attention projection compressed."""
import re

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.nn import Packable
from deepshrink.packing import inspect, load, save

# ResNet-20 on 8x8 inputs, stage 1 only (6 convs of 16 channels): ResNet-style blocks for FBS, Hessians
# small enough for exact L-OBS, and every method's layer swap, gates and quantizers exercised.
RECIPE_LAYERS = [{"pattern": "layer2.*", "skip": True}, {"pattern": "layer3.*", "skip": True}]
TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.log_every=1000"]


@pytest.mark.parametrize("method", deepshrink.list_methods())
def test_method_output_survives_pack_and_load(method, tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)]
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=4)
    result = deepshrink.compress(model, {"method": method, "layers": RECIPE_LAYERS}, train_data=data,
                                 calib_data=data, overrides=TINY)
    compressed = result.model.eval()
    if result.kind == "baseline":  # the full-precision reference: the model as given, packed at fp32
        assert not any(isinstance(m, Packable) for m in compressed.modules())
        assert all(torch.equal(a, b) for a, b in zip(compressed.state_dict().values(), model.state_dict().values()))
    else:
        assert any(isinstance(m, Packable) for m in compressed.modules()), f"{method} left nothing to pack"
    report = save(compressed, tmp_path / "m.dsz")
    loaded = load(tmp_path / "m.dsz")
    frozen = deepshrink.load(tmp_path / "m.dsz", frozen=True)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in compressed.modules()]
    with torch.no_grad():
        for images, _ in data:
            assert (loaded(images) - compressed(images)).abs().max().item() <= 1e-5
            assert torch.equal(frozen(images), loaded(images))  # the same code on the same tensors
    assert sum(row["bytes"] for row in inspect(tmp_path / "m.dsz")["layers"]) == report["totals"]["file_bytes"]


class TransformerBlock(nn.Module):
    """A pre-norm transformer block on (B, T, C) tokens: nn.MultiheadAttention, LayerNorm, a GELU MLP."""

    def __init__(self, in_features=6, dim=16, classes=4):
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # (B, T, in_features)
        h = self.embed(x)  # (B, T, C)
        normed = self.norm1(h)
        h = h + self.attn(normed, normed, normed, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))  # (B, classes)


PROJECTIONS = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"]
# methods that compress no Linear layer refuse the block, naming the layers they were given
REFUSES_LINEAR = {"fbs": "none of the selected layers (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj"}


@pytest.mark.parametrize("method", deepshrink.list_methods())
def test_method_compresses_every_attention_projection_and_the_block_reloads(method, tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 5, 6, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)]
    torch.manual_seed(0)
    if method in REFUSES_LINEAR:
        with pytest.raises(UserError, match=re.escape(REFUSES_LINEAR[method])):
            deepshrink.compress(TransformerBlock(), method, train_data=data, calib_data=data, overrides=TINY)
        return
    result = deepshrink.compress(TransformerBlock(), method, train_data=data, calib_data=data, overrides=TINY)
    compressed = result.model.eval()
    for name in PROJECTIONS:
        layer = compressed.get_submodule(name)
        if result.kind == "baseline":  # compresses nothing: every projection stays an fp32 Linear
            assert isinstance(layer, nn.Linear) and not isinstance(layer, Packable), f"{method} changed {name}"
        else:
            assert isinstance(layer, Packable) and layer.encoded.kind != "float", f"{method} left {name} float"
    save(compressed, tmp_path / "block.dsz")
    loaded = load(tmp_path / "block.dsz")
    frozen = deepshrink.load(tmp_path / "block.dsz", frozen=True)  # a traced graph: the block is not in the zoo
    with torch.no_grad():
        for tokens, _ in data:
            assert (loaded(tokens) - compressed(tokens)).abs().max().item() <= 1e-5
            assert torch.equal(frozen(tokens), loaded(tokens))
