"""A whole binary network as one native call: the graph that `to_bits` leaves, translated to a `NetPlan`.

`to_bits` already folds each binary layer's BatchNorm, residual add and ReLU into its epilogue, but the
result still runs as ~30 Python-dispatched ops, with floats in channels-last and 64-channel words even for
16-channel layers. `compile_plan` turns that graph into a list of native ops (float convolution with its
BatchNorm and ReLU, binary convolution, packing, ResNet's option-A shortcut, average pool + linear) that run
image by image in C++:

* every value a binary layer reads is written as sign bits by its producer's epilogue (with the
  reader's input BatchNorm applied first), so no op packs floats on its own unless a value has two
  binary readers or is the network input;
* on the avx512 path a binary layer with at most 64 input channels, stride 1 and one group reads pixel
  lanes (16, 32 or 64 bits per pixel; `bits_lanes.cpp`), any other one reads 64-channel words (the
  per-layer kernel);
* on the avx512 path the pixel-lane layers and the float convolutions (one group) run each output row
  with its epilogue in registers (`bits_lane_rows.cpp`, `bits_float_rows.cpp`): no counts or pixel-major
  sums are written out, and the floats and bits equal the generic epilogue's (`bits_rows.cpp`) to the bit.

Graphs with anything else (a scaling map K, TTQ's two planes, binary linear layers, ops not listed)
give None, and the engine runs the fx graph instead.

Example::

    gm = to_bits(model, "avx512")
    plan = compile_plan(gm, (3, 32, 32), "avx512")
    logits = plan(x) if plan is not None else gm(x)
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from .. import kernels
from ..kernels.layers import BitConv2d

_RELUS = (torch.relu, torch.nn.functional.relu)
_FLATTENS = (torch.flatten,)


class Unsupported(Exception):
    """The graph holds something the native plan does not run."""


@dataclass
class _Value:
    shape: tuple[int, int, int]  # (C, H, W) of one image
    producer: "_Op | None"       # None: the network input
    float_readers: int = 0
    bit_readers: list = field(default_factory=list)  # _Op reading this value's bits
    index: int = -1              # in the native plan
    bits_for: "_Op | None" = None
    pooled_from: "_Value | None" = None  # set on a global average pool's (C, 1, 1) output


@dataclass
class _Op:
    kind: str                    # float_conv, bit_conv, pack, pool_linear, shortcut
    inputs: list
    out: _Value | None = None
    module: nn.Module | None = None
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    relu: bool = False
    weight: torch.Tensor | None = None
    conv_shape: list | None = None  # float_conv: (C, O, KH, KW, SH, SW, PH, PW, DH, DW, G)
    stride: int = 1                 # shortcut: x[:, :, ::stride, ::stride] ...
    pad_before: int = 0             # ... with this many zero channels before (and the rest after)


def _conv_out(shape, conv_shape) -> tuple[int, int, int]:
    """Output (C, H, W) of a convolution with shape (C, O, KH, KW, SH, SW, PH, PW, DH, DW, G)."""
    _, height, width = shape
    _, out_ch, kh, kw, sh, sw, ph, pw, dh, dw, _ = conv_shape
    return out_ch, (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _lane_bits(layer: BitConv2d, path: str) -> int:
    """The input format `layer` reads: 16/32/64-bit pixel lanes, or 0 for 64-channel words."""
    return kernels.lane_bits(layer.shape, ternary=bool(layer.planes[0][1].numel()), path=path)


def _float_conv(module: nn.Conv2d) -> _Op:
    """A float Conv2d as a plan op (scale 1, shift = bias) before any BatchNorm folds into it."""
    if not isinstance(module.padding, tuple) or module.padding_mode != "zeros":
        raise Unsupported("a float conv with string or non-zero padding")
    out_ch = module.out_channels
    shape = [module.in_channels, out_ch, *module.kernel_size, *module.stride, *module.padding, *module.dilation,
             module.groups]
    bias = module.bias.detach().float() if module.bias is not None else torch.zeros(out_ch)
    return _Op("float_conv", [], module=module, scale=torch.ones(out_ch), shift=bias.clone(),
               weight=module.weight.detach().float().contiguous(), conv_shape=shape)


def _trace(gm: torch.fx.GraphModule, input_shape) -> tuple[list[_Op], _Value, _Value]:
    """The plan's ops in graph order, its input value and its output value."""
    values: dict[torch.fx.Node, _Value] = {}
    ops: list[_Op] = []
    first = None

    def value(node) -> _Value:
        if not isinstance(node, torch.fx.Node) or node not in values:
            raise Unsupported(f"an argument {node!r} that no supported op produced")
        return values[node]

    def single_op_value(node) -> tuple[_Op, _Value]:  # a float conv whose output only this node reads
        v = value(node)
        if v.producer is None or v.producer.kind != "float_conv" or len(node.users) != 1 or v.producer.relu:
            raise Unsupported(f"{node.name} follows something it cannot fold into")
        return v.producer, v

    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            if first is not None:
                raise Unsupported("more than one input")
            first = values[node] = _Value(tuple(input_shape), None)
        elif node.op == "call_method" and node.target == "contiguous":
            values[node] = value(node.args[0])
        elif isinstance(module, BitConv2d):
            if module.scaling_map is not None or len(module.planes) != 1 or module.linear:
                raise Unsupported("a binary layer with a scaling map, two weight planes or a linear shape")
            ins = [value(a) for a in node.args]
            op = _Op("bit_conv", ins, module=module, scale=module.scales[0], shift=module.shift, relu=module.relu)
            op.out = values[node] = _Value(_conv_out(ins[0].shape, module.shape), op)
            ins[0].bit_readers.append(op)
            if len(ins) > 1:
                ins[1].float_readers += 1
            ops.append(op)
        elif isinstance(module, nn.Conv2d):
            op = _float_conv(module)
            op.inputs = [value(node.args[0])]
            op.inputs[0].float_readers += 1
            op.out = values[node] = _Value(_conv_out(op.inputs[0].shape, op.conv_shape), op)
            ops.append(op)
        elif isinstance(module, nn.BatchNorm2d):
            op, v = single_op_value(node.args[0])
            mul = torch.rsqrt(module.running_var.float() + module.eps)
            mul = mul * module.weight.detach().float() if module.weight is not None else mul
            add = -module.running_mean.float() * mul
            add = add + module.bias.detach().float() if module.bias is not None else add
            op.scale, op.shift = op.scale * mul, op.shift * mul + add
            values[node] = v
        elif isinstance(module, nn.ReLU) or (node.op == "call_function" and node.target in _RELUS) or \
                (node.op == "call_method" and node.target in ("relu", "relu_")):
            op, v = single_op_value(node.args[0])
            op.relu, values[node] = True, v
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            v = value(node.args[0])
            v.float_readers += 1
            values[node] = _Value((v.shape[0], 1, 1), None, pooled_from=v)
        elif (node.op == "call_method" and node.target == "flatten") or \
                (node.op == "call_function" and node.target in _FLATTENS):
            v = value(node.args[0])
            if v.pooled_from is None or node.args[1:] not in ((1,), ()) or node.kwargs:
                raise Unsupported("a flatten that does not follow a global average pool")
            values[node] = v
        elif isinstance(module, nn.Linear):
            v = value(node.args[0])
            if v.pooled_from is None or len(node.users) > 1:
                raise Unsupported("a linear layer that does not follow a global average pool")
            bias = module.bias.detach().float() if module.bias is not None else torch.zeros(module.out_features)
            op = _Op("pool_linear", [v.pooled_from], weight=module.weight.detach().float(), shift=bias)
            op.out = values[node] = _Value((module.out_features, 1, 1), op)
            ops.append(op)
        elif node.op == "call_function" and node.target is operator.getitem:
            v, index = value(node.args[0]), node.args[1]
            steps = {s.step for s in index[2:]} if isinstance(index, tuple) and len(index) == 4 and \
                all(isinstance(s, slice) and s.start is None and s.stop is None for s in index) and \
                index[0].step is None and index[1].step is None else set()
            if len(steps) != 1 or not isinstance(next(iter(steps)), (int, type(None))):
                raise Unsupported(f"the indexing {node.format_node()}")
            stride = next(iter(steps)) or 1
            v.float_readers += 1
            op = _Op("shortcut", [v], stride=stride)
            op.out = values[node] = _Value((v.shape[0], -(-v.shape[1] // stride), -(-v.shape[2] // stride)), op)
            ops.append(op)
        elif node.op == "call_function" and node.target is torch.nn.functional.pad:
            v = value(node.args[0])
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            if v.producer is None or v.producer.kind != "shortcut" or len(node.users) == 0 or \
                    len(node.args[0].users) != 1 or len(pad) != 6 or any(pad[:4]) or \
                    node.kwargs.get("mode", "constant") != "constant" or node.kwargs.get("value") not in (None, 0, 0.0):
                raise Unsupported(f"the padding {node.format_node()}")
            v.producer.pad_before = pad[4]
            v.shape = (v.shape[0] + pad[4] + pad[5], *v.shape[1:])
            values[node] = v
        elif node.op == "output":
            out = value(node.args[0])
            if out.producer is None or out.producer.kind == "pack":
                raise Unsupported("an output no op writes")
            out.float_readers += 1
            return ops, first, out
        else:
            raise Unsupported(f"the op {node.format_node()}")
    raise Unsupported("no output")


class PlanRunner:
    """Calls the native plan; `plan(x)` returns what the graph would."""

    def __init__(self, native_plan, input_index: int, output_index: int, flat: bool):
        self.native, self.input_index, self.output_index, self.flat = native_plan, input_index, output_index, flat

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.native.run(x, self.input_index, self.output_index)
        return y.reshape(y.shape[0], -1) if self.flat else y

    def resident_bytes(self) -> int:
        return int(self.native.resident_bytes())


def compile_plan(gm: torch.fx.GraphModule, input_shape, path: str) -> PlanRunner | None:
    """The native plan of a graph made by `to_bits`, or None when it holds an op the plan lacks."""
    try:
        ops, first, out = _trace(gm, input_shape)
    except Unsupported:
        return None
    plan = kernels.native().NetPlan(path)
    all_values = [first] + [op.out for op in ops]
    # each value's bits go to its first binary reader; any other reader gets a packed copy
    extra: list[tuple[_Value, _Op]] = []
    for v in all_values:
        for reader in v.bit_readers:
            if v.bits_for is None and v.producer is not None and v.producer.kind != "pool_linear":
                v.bits_for = reader
            else:
                v.float_readers += 1
                extra.append((v, reader))

    def add_value(v: _Value, reader: _Op | None, has_float: bool) -> int:
        lane, groups, affine = 0, 1, (None, None)
        if reader is not None:
            lane = _lane_bits(reader.module, path) or 64
            groups = 1 if lane < 64 else reader.module.groups
            affine = reader.module.in_affine or (None, None)
        return plan.add_value(*v.shape, has_float, lane, groups, *affine)

    for v in all_values:
        v.index = add_value(v, v.bits_for, v.float_readers > 0)
    bits_of: dict[tuple[int, int], int] = {}  # (value, reader) -> value index holding the reader's bits
    for op in ops:
        for v, reader in extra:
            if reader is op:
                bits_of[id(v), id(op)] = packed = add_value(v, op, False)
                plan.add_pack(v.index, packed)
        if op.kind == "float_conv":
            plan.add_float_conv(op.inputs[0].index, op.out.index, op.conv_shape, op.weight, op.scale, op.shift, op.relu)
        elif op.kind == "bit_conv":
            x = bits_of.get((id(op.inputs[0]), id(op)), op.inputs[0].index)
            residual = op.inputs[1].index if len(op.inputs) > 1 else -1
            plan.add_bit_conv(x, residual, op.out.index, op.module.shape, *op.module.planes[0], op.scale, op.shift,
                              op.relu)
        elif op.kind == "shortcut":
            plan.add_shortcut(op.inputs[0].index, op.out.index, op.stride, op.pad_before)
        else:
            plan.add_pool_linear(op.inputs[0].index, op.out.index, op.weight, op.shift)
    return PlanRunner(plan, first.index, out.index, flat=out.producer.kind == "pool_linear")
