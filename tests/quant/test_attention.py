"""nn.MultiheadAttention is never compressed silently wrong: its projections stay float, with a warning."""
import pytest
import torch
from torch import nn

import deepshrink


class TinyTransformer(nn.Module):
    def __init__(self, dim=16, classes=4):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # (B, T, 8)
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.head(self.mlp(h).mean(1))


@pytest.mark.parametrize("method", ["bwn", "dorefa"])
def test_attention_projections_stay_float_and_the_warning_names_them(method):
    model = TinyTransformer().eval()
    x = torch.randn(4, 5, 8)
    data = [(x, torch.zeros(4, dtype=torch.long))]
    with pytest.warns(UserWarning, match="attn: nn.MultiheadAttention reads its projection weights itself"):
        result = deepshrink.compress(model, method, train_data=data, overrides=["train.epochs=0"])
    compressed = result.model
    assert type(compressed.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert torch.equal(compressed.attn.in_proj_weight, model.attn.in_proj_weight)
    assert type(compressed.mlp) is not nn.Linear  # the layers outside the attention are compressed
