"""The integer engine's graph: a loaded compressed model as a QDQ ONNX graph that ONNX Runtime fuses
into QLinearConv / QLinearAdd (MLAS u8s8 kernels, VNNI on AVX-512 CPUs).

1. Export (TorchScript exporter) with each compressed layer's weight as DequantizeLinear(int8 q,
   per-channel scale) (`qdq.weight_integer_form`: the codes, never re-quantized) and its input
   quantizer as a marker node `deepshrink::ActQuant` carrying its uint8 grid (`qdq.activation_grid`).
2. Fold each BatchNormalization into the conv before it: the per-channel factor gamma / sqrt(var + eps)
   multiplies the weight's scale (q negated where the factor is negative), so the codes stay exact
   and the conv's output is the BN's: a BN left between a quantized conv and its output Q would keep
   the conv in float.
3. Layers the method left in float (e.g. DoReFa's first conv and last fc; an encoding with
   `float_values`) get int8 per-channel symmetric weights (max |w| / 127), as ONNX Runtime's own
   quantizer writes them; on an x86 CPU without VNNI (`qdq.pairs_saturate`) 7-bit ones (max |w| / 64,
   ONNX Runtime's `reduce_range`), and every method's codes must stay within `qdq.weight_limit` of their
   input grid, so that MLAS's 16-bit pair sums cannot saturate.
4. Activations: a tensor read by a trained quantizer is rounded to that quantizer's grid right where
   it is produced (Q with the grid's scale and zero point, then a uint8 Clip when the grid is narrower
   than uint8: 4 bits clip at 15); every other input and output of a conv, linear or Add gets 8-bit
   uint8 with the min/max range over the calibration images (`qdq.minmax_grid`). A conv or Add
   whose output is read at several precisions (a ResNet block's output: the next block's 4-bit conv
   input and its float identity shortcut) is duplicated, one copy per precision, so each consumer
   sees one rounding of the exact sum, as in the PyTorch model, never a 4-bit rounding of an 8-bit one.
5. Calibrate: the graph of step 4 with the 8-bit points left in float runs on the calibration images;
   their min/max set the 8-bit grids; biases become int32 at scale x_scale * w_scale, after each
   channel's codes are multiplied by a power of two k (scale / k: the same weight bit for bit) so
   that this step is k times finer (`Rewrite._widen`).

How close this can come to the file: only as close as the file comes to itself. A W4A4 ResNet re-rounds
its activations at every quantized conv, and a code flipped by a tiny error flips others downstream,
so each departure from the PyTorch arithmetic that the engine must make (int32 biases, 8-bit residual
streams, int8 weights for float layers), even alone, changes as many predictions as Gaussian noise of
1% of a step on the file's own quantizer inputs (`qdq.quantizer_noise`): read the engine's top-1
against the spread of such perturbed copies of the file, which the `engine_agreement` bench measure
(deepshrink/bench/measures_runtime.py; the suite resnet20-speed) measures beside it.

Example::

    graph = build_integer_graph(model, example, calibration)   # onnx.ModelProto
"""
from __future__ import annotations

import io
import warnings

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ..nn.compressed import CompressedConv2d, CompressedLinear
from .qdq import activation_grid, pairs_saturate, weight_integer_form, weight_limit
from .qdq_rewrite import MARKER, OPSET, Rewrite, calibrate


class _ActQuantMarker(torch.autograd.Function):
    """A `deepshrink::ActQuant` node carrying the quantizer's grid in ONNX; the rewrite replaces it.

    Its torch forward only gives the tracer a tensor of the right shape (the exporter's peephole pass
    fails on a Python op whose body rounds and clamps), so the traced values after it are not the model's.
    """

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int, qmin: int, qmax: int):
        return x.clone()

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax):
        out = g.op("deepshrink::ActQuant", x, scale_f=scale, zero_point_i=zero_point, qmin_i=qmin, qmax_i=qmax)
        out.setType(x.type())
        return out


class _Int8Weight(torch.autograd.Function):
    """W = q * scale per output channel; DequantizeLinear(q int8, scale, 0, axis=0) in ONNX."""

    @staticmethod
    def forward(ctx, q, scale):
        return q.float() * scale.reshape(-1, *[1] * (q.dim() - 1))

    @staticmethod
    def symbolic(g, q, scale):
        zero = g.op("Constant", value_t=torch.zeros(scale.type().sizes()[0], dtype=torch.int8))
        return g.op("DequantizeLinear", q, scale, zero, axis_i=0)


def _limit(module: nn.Module, saturating: bool) -> int:
    """`weight_limit` for this layer's input: its trained grid, else an 8-bit calibrated one."""
    grid = None if module.input_quant is None else activation_grid(module.input_quant)
    return weight_limit(255 if grid is None or isinstance(grid, str) else grid.qmax, saturating)


def integer_obstacle(model: nn.Module, saturating: bool | None = None) -> str | None:
    """None when every compressed layer has int8 codes (within `weight_limit` where `saturating`, by default
    this CPU's `pairs_saturate()`) and a uint8 input grid; else the first obstacle."""
    saturating = pairs_saturate() if saturating is None else saturating
    for name, module in model.named_modules():
        if not isinstance(module, (CompressedConv2d, CompressedLinear)):
            continue
        if module.input_quant is not None:
            if hasattr(module.input_quant, "scale_output"):
                return f"{name}: {type(module.input_quant).__name__} rescales the layer's output"
            grid = activation_grid(module.input_quant)
            if isinstance(grid, str):
                return f"{name}: {grid}"
        if not module.encoded.encoding.float_values:  # float values are rounded in step 3
            form = weight_integer_form(module.encoded, _limit(module, saturating))
            if isinstance(form, str):
                return f"{name}: {form}"
    return None


def _integer_forward(module: nn.Module, saturating: bool):
    form = None if module.encoded.encoding.float_values else weight_integer_form(
        module.encoded, _limit(module, saturating))
    grid = None if module.input_quant is None else activation_grid(module.input_quant)

    def forward(x):
        if grid is not None:
            x = _ActQuantMarker.apply(x, grid.scale, grid.zero_point, grid.qmin, grid.qmax)
        weight = module.weight if form is None else _Int8Weight.apply(*form)
        if isinstance(module, CompressedConv2d):
            return F.conv2d(x, weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
        return F.linear(x, weight, module.bias)

    return forward


def export_marked(model: nn.Module, example: torch.Tensor, saturating: bool | None = None) -> onnx.ModelProto:
    """Step 1: the model as ONNX with int8 weight DequantizeLinear nodes and ActQuant markers (codes within
    `weight_limit` where `saturating`, by default this CPU's `pairs_saturate()`)."""
    saturating = pairs_saturate() if saturating is None else saturating
    obstacle = integer_obstacle(model, saturating)
    if obstacle:
        raise ValueError(obstacle)
    patched = [m for m in model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    markers = {MARKER[0]: 1} if any(m.input_quant is not None for m in patched) else {}
    for module in patched:
        module.forward = _integer_forward(module, saturating)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"], custom_opsets=markers,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        for module in patched:
            del module.forward
    return onnx.load_from_string(buffer.getvalue())


def export_float(model: nn.Module, example: torch.Tensor) -> bytes:
    """A float network as ONNX bytes (BatchNorm folded by the exporter)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return buffer.getvalue()


def build_integer_graph(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                        batch_size: int = 64, saturating: bool | None = None) -> onnx.ModelProto:
    """Steps 1-5: the QDQ graph of `model`, 8-bit points calibrated on `calibration` (N, C, H, W);
    `saturating` (default: this CPU's `pairs_saturate()`): keep every u8 x s8 pair sum inside int16."""
    saturating = pairs_saturate() if saturating is None else saturating
    rewrite = Rewrite(export_marked(model, example, saturating), saturating)
    rewrite.fold_batchnorm()
    rewrite.quantize_float_weights()
    probe, points = rewrite.build(ranges=None)
    ranges = calibrate(probe, points, calibration, batch_size)
    graph, _ = rewrite.build(ranges)
    return graph
