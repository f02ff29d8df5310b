"""Multi-head attention whose four projections are plain nn.Linear layers, so every method compresses them.

nn.MultiheadAttention keeps q, k and v in one `in_proj_weight` and reads `out_proj.weight` itself inside
`F.multi_head_attention_forward`: `out_proj.forward()` never runs, so a method that swaps the projections
for quantized layers would train and pack layers the network never calls. `SplitAttention` computes the
same function (Vaswani et al. 2017, Eq. 1-2: softmax(Q K^T / sqrt(d_head) + mask) V per head, then the
output projection) with `q_proj`, `k_proj`, `v_proj` and `out_proj` called as modules, and
`split_attention(model)` puts one in place of every nn.MultiheadAttention, weights copied, before any
method runs (`deepshrink.compress` does it). The core between the projections is one function, `attend`,
that torch.fx records as a single call, so a packed model's traced graph rebuilds it by name.

Example::

    attn = SplitAttention.from_float(nn.MultiheadAttention(16, 2, batch_first=True))
    out, weights = attn(x, x, x)               # x (B, T, 16); equal to the original's within 1e-6
    model = split_attention(model)             # every nn.MultiheadAttention replaced in place
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .compressed import set_module


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend, as nn.MultiheadAttention reads it) as 0 / -inf; a float mask
    is already additive."""
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    if mask.dtype != torch.bool:
        raise TypeError(f"attention masks must be bool or float, got {mask.dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


@torch.fx.wrap
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, batch_first: bool = False,
           key_padding_mask=None, attn_mask=None, dropout: float = 0.0, need_weights: bool = True,
           average_weights: bool = True, bias_k=None, bias_v=None, add_zero_attn: bool = False,
           is_causal: bool = False):
    """Scaled dot-product attention over heads of projected q, k, v, as F.multi_head_attention_forward
    computes it between its input and output projections. Returns (context, weights or None).

    q (T, B, C), k and v (S, B, C), or (B, T, C) with `batch_first`, or unbatched (T, C); masks as
    nn.MultiheadAttention takes them: key_padding_mask (B, S), attn_mask (T, S) or (B * heads, T, S).
    `is_causal` is nn.MultiheadAttention's hint, followed as it does: without a key padding mask or weights,
    scaled_dot_product_attention applies its own causal mask in place of `attn_mask`.
    """
    is_causal = is_causal and key_padding_mask is None and not need_weights
    attn_mask = None if is_causal else attn_mask
    unbatched = q.dim() == 2
    if unbatched:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)  # (T, 1, C)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (T, B, C)
    length, batch, channels = q.shape
    head_dim = channels // num_heads
    key_padding_mask, attn_mask = _additive(key_padding_mask, q.dtype), _additive(attn_mask, q.dtype)
    if bias_k is not None:  # add_bias_kv: one learned key and value appended to the sequence
        k = torch.cat([k, bias_k.repeat(1, batch, 1)])  # (S+1, B, C)
        v = torch.cat([v, bias_v.repeat(1, batch, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    q = q.reshape(length, batch * num_heads, head_dim).transpose(0, 1)  # (B*H, T, hd)
    k = k.reshape(k.shape[0], batch * num_heads, head_dim).transpose(0, 1)  # (B*H, S, hd)
    v = v.reshape(v.shape[0], batch * num_heads, head_dim).transpose(0, 1)  # (B*H, S, hd)
    if add_zero_attn:  # a zero key and value appended after the heads are split
        k = torch.cat([k, k.new_zeros(k.shape[0], 1, head_dim)], dim=1)  # (B*H, S+1, hd)
        v = torch.cat([v, v.new_zeros(v.shape[0], 1, head_dim)], dim=1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    source = k.shape[1]
    mask = attn_mask  # (T, S), or (B*H, T, S) as (B, H, T, S)
    if mask is not None and mask.dim() == 3:
        mask = mask.reshape(batch, num_heads, length, source)
    if key_padding_mask is not None:
        padding = key_padding_mask.reshape(batch, 1, 1, source)  # (B, 1, 1, S)
        mask = padding if mask is None else mask + padding
    q, k, v = (t.reshape(batch, num_heads, -1, head_dim) for t in (q, k, v))  # (B, H, T or S, hd)
    weights = None
    if need_weights:
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, S)
        weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        if dropout > 0:
            weights = F.dropout(weights, dropout)
        context = weights @ v  # (B, H, T, hd)
        weights = weights.mean(dim=1) if average_weights else weights  # (B, T, S) or (B, H, T, S)
        weights = weights.squeeze(0) if unbatched else weights
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal)  # (B, H, T, hd)
    context = context.permute(2, 0, 1, 3).reshape(length, batch, channels)  # (T, B, C)
    if unbatched:
        context = context.squeeze(1)  # (T, C)
    elif batch_first:
        context = context.transpose(0, 1)  # (B, T, C)
    return context, weights


class SplitAttention(nn.Module):
    """nn.MultiheadAttention's function with its q, k, v and output projections as nn.Linear modules.

    Same constructor and forward signature as nn.MultiheadAttention; `from_float` copies one.
    `in_proj_weight` and `in_proj_bias` are None, which keeps nn.TransformerEncoderLayer off its fused
    fast path (that path reads every weight itself).

    Example::

        attn = SplitAttention(16, num_heads=2, batch_first=True)
        out, _ = attn(x, x, x, need_weights=False)   # x (B, T, 16)
    """

    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.add_zero_attn = bool(batch_first), bool(add_zero_attn)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim)) if add_bias_kv else None

    @classmethod
    def from_float(cls, attention: nn.MultiheadAttention) -> "SplitAttention":
        """The SplitAttention computing what `attention` computes (its weights copied; its mode kept)."""
        bias = attention.in_proj_bias is not None
        split = cls(attention.embed_dim, attention.num_heads, attention.dropout, bias,
                    attention.bias_k is not None, attention.add_zero_attn, attention.kdim, attention.vdim,
                    attention.batch_first)
        weights = (attention.in_proj_weight.chunk(3) if attention._qkv_same_embed_dim else
                   (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight))
        biases = attention.in_proj_bias.chunk(3) if bias else (None,) * 3
        with torch.no_grad():
            for layer, weight, bias_part in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases):
                layer.weight.copy_(weight)
                if bias_part is not None:
                    layer.bias.copy_(bias_part)
            split.out_proj.weight.copy_(attention.out_proj.weight)
            if bias:
                split.out_proj.bias.copy_(attention.out_proj.bias)
            if split.bias_k is not None:
                split.bias_k.copy_(attention.bias_k)
                split.bias_v.copy_(attention.bias_v)
        return split.to(attention.out_proj.weight.device).train(attention.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        """(output, attention weights averaged over heads, or None): nn.MultiheadAttention.forward's result.
        `is_causal` is a hint there too: `attn_mask` must hold the causal mask."""
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal needs attn_mask, as in nn.MultiheadAttention")
        result = attend(self.q_proj(query), self.k_proj(key), self.v_proj(value), self.num_heads,
                        self.batch_first, key_padding_mask, attn_mask, self.dropout if self.training else 0.0,
                        need_weights, average_attn_weights, self.bias_k, self.bias_v, self.add_zero_attn,
                        is_causal)
        return self.out_proj(result[0]), result[1] if need_weights else None

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, dropout={self.dropout}, batch_first={self.batch_first}"


def split_attention(model: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention in `model` (in place; the model itself too) by its SplitAttention.

    Subclasses are left alone: their forward may differ, and `deepshrink.compress` refuses any module that
    reads a compressed layer's weight outside the layer's forward, naming it."""
    if type(model) is nn.MultiheadAttention:
        return SplitAttention.from_float(model)
    for name, module in list(model.named_modules()):
        if type(module) is nn.MultiheadAttention:
            set_module(model, name, SplitAttention.from_float(module))
    return model
