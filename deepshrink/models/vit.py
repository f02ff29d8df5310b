"""A small vision transformer for 32x32 images (Dosovitskiy et al., "An Image is Worth 16x16 Words",
ICLR 2021), sized to cost about what a CIFAR ResNet-20 costs per image.

A 4x4 patch embedding (a stride-4 conv) turns a 32x32 image into 64 tokens; a learned position
embedding is added; pre-norm blocks x + MHA(LN(x)), x + MLP(LN(x)) (MLP: Linear, GELU, Linear) follow;
a final LayerNorm, the mean over tokens (or a class token, `pool="cls"`) and a Linear head classify.

`vit_tiny_cifar` (dim 128, 4 blocks, 4 heads, MLP ratio 2): 0.55 M parameters and 38.1 M MACs per
32x32 image, the attention's score and weighted-sum products included (ResNet-20: 0.27 M, 40.6 M).

Attention is PyTorch's nn.MultiheadAttention, as a user's own transformer would hold it;
`deepshrink.compress` replaces it by `SplitAttention` (q, k, v and output projections as Linear layers)
before any method runs. The patch embedding is registered first and the head last, so `keep_first_last`
keeps them in float as it keeps a CNN's first conv and classifier::

    model = deepshrink.create_model("vit_tiny_cifar")
    logits = model(images)                 # images (N, 3, 32, 32) -> (N, 10)
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..registry import register_model

POOLS = ("mean", "cls")


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + MHA(LN(x)), then x + MLP(LN(x)) on (B, T, C) tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):  # (B, T, C)
        normed = self.norm1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding -> position embedding -> pre-norm blocks -> LayerNorm -> mean (or class token) -> head.

    `image_size` must be a multiple of `patch_size`; the token count is (image_size / patch_size)^2.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 128, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 2.0, num_classes: int = 10, in_channels: int = 3,
                 pool: str = "mean", dropout: float = 0.0):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"vit: pool must be one of {', '.join(POOLS)}; got {pool!r}")
        if image_size % patch_size:
            raise UserError(f"vit: image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        if dim % num_heads:
            raise UserError(f"vit: dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.pool = pool
        tokens = (image_size // patch_size) ** 2
        # registered first: keep_first_last leaves it in float, as a CNN's stem
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, tokens + (pool == "cls"), dim), std=0.02))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)  # registered last: kept in float by keep_first_last
        self.default_input_size = (in_channels, image_size, image_size)
        self.apply(_init)

    def forward(self, x):  # (B, C_in, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + T, C)
        x = self.norm(self.blocks(x + self.pos_embed))  # (B, T, C)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))  # (B, classes)


def _init(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model()
def vit_tiny_cifar(num_classes: int = 10, in_channels: int = 3, pool: str = "mean") -> VisionTransformer:
    """ViT for 32x32 images: 4x4 patches (64 tokens), dim 128, 4 blocks of 4 heads, MLP ratio 2.

    0.55 M parameters, 38.1 M MACs per image (about ResNet-20's 40.6 M).
    """
    return VisionTransformer(32, 4, 128, 4, 4, 2.0, num_classes, in_channels, pool)
