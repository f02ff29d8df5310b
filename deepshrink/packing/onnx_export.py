"""Export a packed model to ONNX, with quantized weights as integer initialisers + DequantizeLinear.

Layers whose weight is `uniform` with <= 8 bits keep their codes: the weight is a uint8 initialiser
feeding `DequantizeLinear(codes, scale, zero_point, axis=0)` (per filter or per tensor), the weight
side of ONNX's QDQ format (a QuantizeLinear on a constant weight is folded into its integer
initialiser, as onnxruntime's own quantizer writes it). A half-integer zero point (DoReFa's symmetric
grid, codes <= 127) is written as codes 2c, zero point 2z, scale s/2: the same weight, bit for bit. Any
other zero point outside the integers 0..255 becomes `DequantizeLinear(codes, scale, 0) - zero_point * scale`.
Every other encoding is exported as its dequantized float initialiser.

Uses the TorchScript exporter (`dynamo=False`): it runs offline on torch 2.13 without onnxscript's
optimiser and keeps custom symbolics (the torch.export-based exporter needs `onnxscript`).

Example::

    info = export_onnx("model.dsz", "model.onnx")   # info["max_abs_diff"] from onnxruntime vs torch
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nn.compressed import CompressedConv2d, CompressedLinear


class _DequantizeWeight(torch.autograd.Function):
    """weight = (codes - zero_point) * scale - offset; exported as ONNX DequantizeLinear (+ Sub)."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point, offset, param_shape: tuple, has_offset: bool):
        weight = (codes.float() - zero_point.float().reshape(param_shape)) * scale.reshape(param_shape)
        return weight - offset if has_offset else weight

    @staticmethod
    def symbolic(g, codes, scale, zero_point, offset, param_shape, has_offset):
        weight = g.op("DequantizeLinear", codes, scale, zero_point, axis_i=0)
        return g.op("Sub", weight, offset) if has_offset else weight


def _qdq_inputs(module: nn.Module):
    """DequantizeLinear inputs (codes uint8, scale, zero point uint8, offset, param shape, has offset) for a
    uniform <= 8-bit weight; None for any other encoding."""
    encoded = getattr(module, "encoded", None)
    if encoded is None or encoded.kind != "uniform" or encoded.bits > 8:
        return None
    shape = tuple(module.weight.shape)
    out = shape[0]
    scale = encoded.params["scale"].float().reshape(-1)
    zero = encoded.params["zero_point"].float().reshape(-1)
    per_channel = scale.numel() > 1 or zero.numel() > 1
    if per_channel:
        scale, zero = scale.expand(out).contiguous(), zero.expand(out).contiguous()
        param_shape = (out, *([1] * (len(shape) - 1)))  # broadcasts over a filter
    else:
        scale, zero = scale.reshape(()), zero.reshape(())
        param_shape = ()
    codes = encoded.codes.reshape(shape).to(torch.int64)
    if not _is_uint8(zero) and _is_uint8(2 * zero) and int(codes.max()) <= 127:
        # half-integer zero point (DoReFa's grid centre): (c - z) s == (2c - 2z)(s / 2) exactly in float
        codes, zero, scale = 2 * codes, 2 * zero, scale / 2
    integral = _is_uint8(zero)
    offset = torch.zeros(()) if integral else (zero * scale).reshape(param_shape)
    zero_codes = zero.round().to(torch.uint8) if integral else torch.zeros_like(zero, dtype=torch.uint8)
    return codes.to(torch.uint8), scale, zero_codes, offset, param_shape, not integral


def _is_uint8(values: torch.Tensor) -> bool:
    return bool(torch.equal(values, values.round()) and values.min() >= 0 and values.max() <= 255)


@contextlib.contextmanager
def qdq_weights(model: nn.Module):
    """Within the block, compressed layers with uniform <= 8-bit weights compute them via DequantizeLinear."""
    patched = []
    for module in model.modules():
        inputs = _qdq_inputs(module) if isinstance(module, (CompressedConv2d, CompressedLinear)) else None
        if inputs is None:
            continue

        def forward(x, m=module, args=inputs):
            weight = _DequantizeWeight.apply(*args)
            if isinstance(m, CompressedConv2d):
                y = F.conv2d(m._quantize_input(x), weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            else:
                y = F.linear(m._quantize_input(x), weight, m.bias)
            return m._scale_output(x, y)

        module.forward = forward
        patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def export_onnx(src, out_path, input_shape: tuple[int, ...] | None = None, opset: int = 17,
                verify: bool = True) -> dict:
    """Write the model in `src` (a `.dsz` path or a loaded model) as ONNX; optionally check it in onnxruntime.

    Returns {"path", "qdq_layers", "opset", "activation_quantized"} and, when verify, "max_abs_diff"
    (onnxruntime vs torch on a random batch of 2) and "max_abs_output" (the largest torch output).
    With quantized activations the two runtimes' last-bit float differences can move a value across a
    rounding boundary (a jump of one activation step), so expect differences of ~1% of the output there;
    weight-only models agree to float precision.
    """
    from .format import load

    model = load(src) if not isinstance(src, nn.Module) else src.eval()
    shape = tuple(input_shape or getattr(model, "default_input_size", ()) or ())
    if not shape:
        raise UserError("the model does not say its input size; give input_shape=(C, H, W) (--input-shape)")
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with qdq_weights(model) as n_qdq, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(out_path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    quantized_inputs = any(getattr(m, "input_quant", None) is not None for m in model.modules())
    info = {"path": str(out_path), "qdq_layers": n_qdq, "opset": opset, "activation_quantized": quantized_inputs}
    if verify:
        try:
            import onnxruntime
        except ImportError:
            raise UserError("verifying the export needs onnxruntime: pip install onnxruntime") from None
        session = onnxruntime.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": example.numpy()})[0]
        with torch.no_grad():
            want = model(example).numpy()
        info["max_abs_diff"] = float(abs(got - want).max())
        info["max_abs_output"] = float(abs(want).max())
    return info
