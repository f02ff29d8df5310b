"""Fold BatchNorm into the preceding conv (PQ's Fusion variant) and put it back as an identity plus bias.

For y = BN(conv(x)) in eval mode, with s = gamma / sqrt(var + eps):
    conv'(x) = (s * W) x + (beta - s * mean + s * b)     equals BN(conv(x)) exactly.
While compressing, the BN is replaced by nn.Identity and the conv carries the fused bias, so layer-wise
solvers treat the bias as a free variable. `unfold_bias` restores the model's structure: the conv loses
its bias again and the BN becomes an identity (mean 0, var 1 - eps, gamma 1) whose beta is the fused
bias, so the architecture (and a packed file's layout) is unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..nn import set_module


def conv_bn_pairs(model: nn.Module, names: list[str]) -> dict[str, str]:
    """{conv name: BN name} where a selected conv is directly followed (in module order) by a matching BN."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    pairs = {}
    for (name, module), (next_name, following) in zip(leaves, leaves[1:]):
        if (name in names and isinstance(module, nn.Conv2d) and isinstance(following, nn.BatchNorm2d)
                and following.num_features == module.out_channels):
            pairs[name] = next_name
    return pairs


def fold_batchnorm(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, nn.BatchNorm2d]:
    """Fold each conv's BN into it (in place); returns {conv name: the removed BN module}.

    Checks on `example` that the network computes the same function afterwards.
    """
    pairs = conv_bn_pairs(model, names)
    model.eval()
    with torch.no_grad():
        before = model(example)
    removed = {}
    for conv_name, bn_name in pairs.items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        bias = bn.bias.detach() - scale * bn.running_mean
        if conv.bias is not None:
            bias = bias + scale * conv.bias.detach()
        conv.weight.data *= scale.reshape(-1, 1, 1, 1)
        conv.bias = nn.Parameter(bias.clone())
        set_module(model, bn_name, nn.Identity())
        removed[conv_name] = (bn_name, bn)
    with torch.no_grad():
        after = model(example)
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * before.abs().max().item()):
        raise UserError("fuse_bn: folding BatchNorm changed the network's output; the conv/BN pairs found "
                        f"by module order ({pairs}) do not chain in forward(); use fuse_bn: false")
    return removed


def unfold_bias(model: nn.Module, removed: dict) -> None:
    """Undo the structural part of `fold_batchnorm`: the fused bias moves into an identity BN."""
    for conv_name, (bn_name, bn) in removed.items():
        conv = model.get_submodule(conv_name)
        with torch.no_grad():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(conv.bias.detach())
        conv.bias = None
        set_module(model, bn_name, bn)
