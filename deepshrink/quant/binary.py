"""BWN and XNOR-Net (Rastegari et al. 2016): binary weights alpha * sign(W); XNOR-Net adds binary inputs.

BWN (Eq. 4): alpha = mean |W| per output filter (per layer with `per_channel: false`), the sign's
gradient clipped to |W| <= 1. XNOR-Net (Sec. 3.2): the same weights, inputs sign(BN(I)) with the
STE 1{|I| <= 1}, and the binary conv's output scaled by K = A * k (see `XNORActivation`, which also
documents how the paper's BN -> sign -> conv -> pool order is applied to an existing network).

Example::

    result = deepshrink.compress(model, "bwn", train_data=train, val_data=test)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx
from torch import nn

from ..errors import UserError
from ..nn import set_module
from ..nn.compressed import PackableIdentity
from ..registry import register_method
from .act_quant import XNORActivation
from .qat import QATConfig, QATMethod
from .weight_quant import BinaryWeight


@dataclass
class BWNConfig(QATConfig):
    """per_channel: one alpha per output filter (the paper) rather than one per layer."""

    per_channel: bool = True


@dataclass
class XNORConfig(BWNConfig):
    """act_bn: put a BatchNorm before each binary activation (the paper's BN -> sign -> conv order).
    drop_relu: remove every ReLU whose output feeds binary layers only (see `relus_feeding_only`).
    scaling_map: scale binary outputs by the paper's K (default); false leaves it out (a deviation, see
    `XNORActivation`)."""

    act_bn: bool = True
    drop_relu: bool = False
    scaling_map: bool = True


@register_method("bwn", BWNConfig)
class BWN(QATMethod):
    """Binary-Weight-Networks: 1-bit weights, full-precision activations."""

    def weight_quantizer(self, cfg, layer):
        return BinaryWeight(cfg.per_channel)


@register_method("xnor", XNORConfig)
class XNOR(BWN):
    """XNOR-Net: 1-bit weights and 1-bit inputs with the scaling map K.

    `drop_relu: true` follows the paper's block (BN -> sign -> binary conv -> pool), where sign is the
    only non-linearity: a ReLU right before a binary activation would map every negative input to
    one value and stop its gradient (the STE 1{|x| <= 1} then passes only positive inputs). A ReLU
    whose output also feeds something else (a ResNet's identity path) is kept. Off by default: when a
    pretrained network is fine-tuned, its features survive binarisation better with their ReLUs in
    place (measured on the shared CIFAR-10 ResNet-20: benchmarks/results/qat_cifar10.jsonl, the `xnor`
    rows tagged `...-droprelu` against the same tags without it).
    """

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.config.drop_relu:
            for name in relus_feeding_only(model, set(self.layer_configs)):
                set_module(model, name, PackableIdentity())
        return super().prepare(model)

    def input_quantizer(self, cfg, layer):
        common = dict(bn=cfg.act_bn, scaling_map=cfg.scaling_map)
        if isinstance(layer, nn.Conv2d):
            return XNORActivation(layer.in_channels, layer.kernel_size, layer.stride, layer.padding,
                                  layer.dilation, conv=True, **common)
        return XNORActivation(layer.in_features, conv=False, **common)


def relus_feeding_only(model: nn.Module, layer_names: set[str]) -> list[str]:
    """Names of the nn.ReLU modules whose output goes, at every call, only to modules in `layer_names`.

    Found by tracing the model with torch.fx (a ReLU called twice qualifies only if both calls do).
    Example: on a CIFAR ResNet with every block conv selected, each block's `relu1` (before `conv2`)
    qualifies; `relu2` (after the residual sum, read by the next block's identity path) does not.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any tracing failure: data-dependent control flow, unsupported ops
        raise UserError(f"xnor: drop_relu needs a model torch.fx can trace, and tracing failed ({exc}); "
                        "set drop_relu: false") from exc
    modules = dict(model.named_modules())
    verdict: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU:
            only = bool(node.users) and all(u.op == "call_module" and u.target in layer_names for u in node.users)
            verdict[node.target] = verdict.get(node.target, True) and only
    return [name for name, only in verdict.items() if only]
