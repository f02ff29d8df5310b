"""A compressed conv/linear layer with binary inputs, run on packed bits by the native kernels.

`BitConv2d.from_compressed(layer)` takes a loaded `CompressedConv2d`/`CompressedLinear` whose weight's
encoding gives +-1 planes (`Encoding.sign_planes`: binary, ternary, pow2 with 3 levels), and whose input
quantizer is XNOR-Net's binary activation sign(BN(x)). The weight planes are packed straight from the
codes (no float copy); the input BatchNorm becomes the packing's per-channel multiply-add.

Output y = dot * scale + shift with dot the integer +-1 sum; afterwards a run-time engine may fold
more into that epilogue (`fold_affine` for a following BatchNorm, `relu`, a residual, and
`emit_packed_for(next)` so that the next binary layer receives bits instead of floats).

Example::

    bit_layer = BitConv2d.from_compressed(model.layer1[0].conv1, path="avx2")
    y = bit_layer(x)    # equals model.layer1[0].conv1(x) up to float rounding
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import CompressedConv2d, CompressedLinear
from . import native, pack_weights, resolve_path


def binary_input_reason(layer: nn.Module) -> str | None:
    """None when `layer`'s input quantizer gives +-1 values this module can pack; else why not."""
    act = getattr(layer, "input_quant", None)
    if act is None:
        return "its input is not quantized"
    if type(act).__name__ != "XNORActivation":
        return f"its input quantizer {type(act).__name__} does not give +-1 values"
    return None


def weight_reason(layer: nn.Module) -> str | None:
    """None when `layer`'s encoded weight can be packed into bit planes (its encoding's `sign_planes`);
    else why not."""
    enc = layer.encoded
    if enc.encoding.sign_planes(enc) is not None:
        return None
    return f"its weight is encoded {enc.kind!r}, not as +-1 planes (binary or ternary)"


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An eval-mode BatchNorm as y = x * mul + add, or None for an Identity."""
    if isinstance(bn, nn.Identity):
        return None
    mul = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        mul = mul * bn.weight.detach().float()
    add = -bn.running_mean.float() * mul
    if bn.bias is not None:
        add = add + bn.bias.detach().float()
    return mul, add


class BitConv2d(nn.Module):
    """Binary-input conv (or linear, as a 1x1 conv on a 1x1 image) on the native bit kernels."""

    def __init__(self, shape: list[int], planes: list[tuple[torch.Tensor, ...]], scales: list[torch.Tensor],
                 shift: torch.Tensor, in_affine: tuple[torch.Tensor, torch.Tensor] | None, linear: bool,
                 scaling_map: nn.Module | None, path: str):
        super().__init__()
        self.shape = list(shape)  # (C, O, KH, KW, SH, SW, PH, PW, DH, DW, G)
        self.planes, self.scales, self.shift = planes, scales, shift  # one plane set per scale (two: TTQ)
        self.in_affine, self.linear, self.scaling_map, self.path = in_affine, linear, scaling_map, path
        self.relu = False
        self.packed_input = False  # the previous layer hands over packed bits
        self.out_float, self.pack_groups, self.pack_affine = True, 0, (None, None)
        self._plan = None  # the native plan, built on first call: fusion must be finished by then

    @property
    def groups(self) -> int:
        return self.shape[10]

    @classmethod
    def from_compressed(cls, layer: nn.Module, path: str | None = None) -> "BitConv2d":
        """The native form of a loaded CompressedConv2d/CompressedLinear (see the module docstring)."""
        reason = binary_input_reason(layer) or weight_reason(layer)
        if reason:
            raise ValueError(f"cannot run {type(layer).__name__} on bits: {reason}")
        if native() is None:
            raise RuntimeError("native bit kernels unavailable")
        linear = isinstance(layer, CompressedLinear)
        if linear:
            shape = [layer.in_features, layer.out_features, 1, 1, 1, 1, 0, 0, 1, 1, 1]
        else:
            assert isinstance(layer, CompressedConv2d) and isinstance(layer.padding, tuple), "string padding"
            shape = [layer.in_channels, layer.out_channels, *layer.kernel_size, *layer.stride, *layer.padding,
                     *layer.dilation, layer.groups]
        out_channels, groups, enc = shape[1], shape[10], layer.encoded
        sign_planes = enc.encoding.sign_planes(enc)  # W = sum of scale * plane (two for TTQ's two scales)
        planes = [pack_weights(plane.codes, groups, ternary=plane.ternary) for plane in sign_planes]
        scales = [plane.scale for plane in sign_planes]
        bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(out_channels)
        act = layer.input_quant
        return cls(shape, planes, scales, bias.clone(), _bn_affine(act.bn), linear,
                   act if act.scaling_map else None, resolve_path(path))

    # ---------------------------------------------------------------- epilogue fusion (engine)
    def can_fuse(self) -> bool:
        """Whether an affine, residual or ReLU can still enter the epilogue (not after K, a ReLU or packing)."""
        return self.scaling_map is None and not self.relu and self.out_float

    def fold_affine(self, mul: torch.Tensor, add: torch.Tensor) -> None:
        """Make the output y * mul + add (a following eval-mode BatchNorm)."""
        self.scales = [s * mul for s in self.scales]
        self.shift = self.shift * mul + add
        self._plan = None

    def fuse_relu(self) -> None:
        """Make the output max(y, 0)."""
        self.relu, self._plan = True, None

    def emit_packed_for(self, consumer: "BitConv2d") -> None:
        """Output the sign bits `consumer` packs from this layer's output, instead of floats."""
        mul, add = consumer.in_affine if consumer.in_affine is not None else (None, None)
        self.out_float, self.pack_groups, self.pack_affine = False, consumer.groups, (mul, add)
        consumer.packed_input = True
        self._plan = consumer._plan = None

    def resident_bytes(self) -> int:
        tensors = [t for plane in self.planes for t in plane] + self.scales + [self.shift]
        tensors += [t for t in (self.in_affine or ()) + self.pack_affine if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def plan(self):
        """The native layer with everything but the input fixed (built after fusion, on first call)."""
        if self._plan is None:
            in_scale, in_shift = self.in_affine or (None, None)
            self._plan = native().BitConvPlan(
                self.shape, [list(p) for p in self.planes], self.scales, self.shift, in_scale, in_shift,
                self.packed_input, self.relu, self.out_float, self.pack_groups, *self.pack_affine, self.linear,
                self.path)
        return self._plan

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.linear and not self.packed_input and x.dim() > 2
        if tokens:  # a linear layer on (B, T, C) tokens: the kernel sees (B T, C) rows
            lead = x.shape[:-1]
            y = (self._plan or self.plan()).run(x.reshape(-1, x.shape[-1]),  # (B T, C)
                                                None if residual is None else residual.reshape(-1, residual.shape[-1]))
            y = y.reshape(*lead, y.shape[-1])  # (B, T, out)
        else:
            y = (self._plan or self.plan()).run(x, residual)
        return y if self.scaling_map is None else y * self.scaling_map._k(x)
