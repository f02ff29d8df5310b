"""Export a packed model to ONNX at its real size: integer initialisers + DequantizeLinear, PQ as Gather.

Each compressed layer's weight is built in the graph from what the `.dsz` file holds, never stored as
float when its codes allow otherwise; its encoding's `onnx_weight` (deepshrink.encodings) says how:

- integer encodings (binary, ternary, uniform, pow2 / L-DNQ, sparse over any of these): the exact form
  `EncodedWeight.integer_form()` gives, W = scale * (q - zero_point), as an integer initialiser q
  feeding `DequantizeLinear(q, scale, zero_point, axis=0)`, the weight side of ONNX's QDQ format (a
  QuantizeLinear on a constant weight folds into its integer initialiser, as onnxruntime's own quantizer
  writes it). Pruned weights are q = zero_point, zeros in the integer tensor. q is int4 / uint4 where it
  fits 4 bits and the opset is >= 21 (DequantizeLinear-21 takes 4-bit inputs; onnxruntime runs them),
  else int8 / uint8. Ternary weights with different positive and negative scales (TTQ) keep one integer
  tensor: W = pos * Relu(q) - neg * Relu(-q), exact, a few elementwise nodes rather than two planes.
- pq: the codebook (fp16 when the file holds it so) and the codes (uint8 / uint16) feed a Gather; the
  blocks are reshaped (and transposed for the channel layout) into the weight (Stock et al., "And the
  Bit Goes Down", ICLR 2020: the codebook plus one index per block is the whole weight).
- anything else (a float or sparse-float weight, sparse PQ, a uniform zero point off the half-integers,
  integers beyond 8 bits) is exported as its dequantized float initialiser, with a warning that names the
  layer and its bytes.

Uses the TorchScript exporter (`dynamo=False`, opset <= 20): it runs offline on torch 2.13 without
onnxscript's optimiser and keeps custom symbolics. A higher opset (default 21) is reached with ONNX's
version converter, after which integer initialisers that fit 4 bits are narrowed.

Example::

    info = export_onnx("model.dsz", "model.onnx")   # info["max_abs_diff"] from onnxruntime vs torch
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nn.compressed import _CompressedMixin

_TORCHSCRIPT_MAX_OPSET = 20
_INT4_OPSET = 21


@contextlib.contextmanager
def exported_weights(model: nn.Module):
    """Within the block, every compressed layer builds its weight from its codes in ONNX ops, as its encoding's
    `onnx_weight` says (see the module doc); yields {"integer": [names], "gather": [names], "float": {name: bytes}}."""
    forms = {"integer": [], "gather": [], "float": {}}
    patched = []
    for name, module in model.named_modules():
        if not isinstance(module, _CompressedMixin):
            continue
        encoded = module.encoded
        form = encoded.encoding.onnx_weight(encoded)
        if form is not None:
            form_name, build = form
            forms[form_name].append(name)
        else:
            weight = encoded.dequantize()
            build = lambda w=weight: w  # noqa: E731
            forms["float"][name] = encoded.numel * 4

        def forward(x, m=module, build=build):
            weight = build()
            if isinstance(m, nn.Conv2d):
                y = F.conv2d(m._quantize_input(x), weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            else:
                y = F.linear(m._quantize_input(x), weight, m.bias)
            return m._scale_output(x, y)

        module.forward = forward
        patched.append(module)
    try:
        yield forms
    finally:
        for module in patched:
            del module.forward


def _constants_to_initialisers(model) -> None:
    """Turn Constant nodes holding a tensor into initialisers (where the TorchScript exporter leaves the
    codes a custom symbolic receives), so that the file lists every weight as an initialiser."""
    kept = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _narrow_to_4_bits(model) -> int:
    """Give int8 / uint8 DequantizeLinear inputs whose values (and zero points) all fit 4 bits int4 / uint4
    copies of their initialisers; returns how many nodes were narrowed. The 8-bit originals are dropped when
    nothing else reads them (the exporter shares equal constants, e.g. one zero point, between nodes)."""
    import ml_dtypes
    from onnx import numpy_helper

    initialisers = {init.name: init for init in model.graph.initializer}
    narrowed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        names = [node.input[0], node.input[2]]
        if any(name not in initialisers for name in names):
            continue
        arrays = [numpy_helper.to_array(initialisers[name]) for name in names]
        if arrays[0].dtype == np.int8 and all(a.min(initial=0) >= -8 and a.max(initial=0) <= 7 for a in arrays):
            target = ml_dtypes.int4
        elif arrays[0].dtype == np.uint8 and all(a.max(initial=0) <= 15 for a in arrays):
            target = ml_dtypes.uint4
        else:
            continue
        for slot, name, array in zip((0, 2), names, arrays):
            narrow_name = f"{name}_4bit"
            if narrow_name not in initialisers:
                initialisers[narrow_name] = numpy_helper.from_array(array.astype(target), narrow_name)
                model.graph.initializer.append(initialisers[narrow_name])
            node.input[slot] = narrow_name
        narrowed += 1
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return narrowed


def _finish_graph(path: str, opset: int) -> tuple[int, int]:
    """Bring the exported file to `opset` and narrow 4-bit weights (opset >= 21); returns (opset, int4 layers)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(path)
    _constants_to_initialisers(model)
    model = version_converter.convert_version(model, opset)
    narrowed = _narrow_to_4_bits(model) if opset >= _INT4_OPSET else 0
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return opset, narrowed


def export_onnx(src, out_path, input_shape: tuple[int, ...] | None = None, opset: int = _INT4_OPSET,
                verify: bool = True, tolerance: float | None = None) -> dict:
    """Write the model in `src` (a `.dsz` path or a loaded model) as ONNX; optionally check it in onnxruntime.

    Returns {"path", "opset", "integer_layers", "int4_layers", "gather_layers", "float_layers" ({name: bytes}),
    "bytes", "activation_quantized"} and, when verify, "max_abs_diff" (onnxruntime vs torch on a random batch
    of 2) and "max_abs_output" (the largest torch output). Opset 21 or above stores 4-bit codes as int4.
    With quantized activations the two runtimes' last-bit float differences can move a value across a
    rounding boundary (a jump of one activation step), so expect differences of ~1% of the output there;
    weight-only models agree to float precision. A difference beyond `tolerance` (relative to the largest
    output; default 1e-4, 5e-2 with quantized activations) raises UserError. The file appears only once it
    is whole and verified: a failure at any step leaves nothing at `out_path`.
    """
    from .format import load, recorded_data

    model = load(src) if not isinstance(src, nn.Module) else src.eval()
    recorded = recorded_data(src) if not isinstance(src, nn.Module) else {}
    shape = tuple(input_shape or getattr(model, "default_input_size", ()) or recorded.get("input_shape") or ())
    if not shape:
        raise UserError("the model does not say its input size; give input_shape=(C, H, W) (--input-shape)")
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    out_path = Path(out_path)
    part = out_path.with_name(f".{out_path.name}.part")
    try:
        info = _export_to(model, example, part, opset, recorded)
        if verify:
            info.update(_verify(model, example, part, tolerance, info["activation_quantized"]))
        os.replace(part, out_path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    info["path"] = str(out_path)
    return info


def _export_to(model: nn.Module, example: torch.Tensor, path: Path, opset: int, recorded: dict) -> dict:
    """Export, bring to `opset`, record the data set; the info dict without verification."""
    with exported_weights(model) as forms, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, do_constant_folding=False,
                          opset_version=min(opset, _TORCHSCRIPT_MAX_OPSET),
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    opset, n_int4 = _finish_graph(str(path), opset)
    if recorded:
        _write_metadata(str(path), recorded)
    for name, nbytes in forms["float"].items():
        warnings.warn(f"{name}: its encoding has no integer or codebook form in ONNX; exported as float "
                      f"({nbytes:,} bytes)", stacklevel=3)
    quantized_inputs = any(getattr(m, "input_quant", None) is not None for m in model.modules())
    return {"path": str(path), "opset": opset, "integer_layers": len(forms["integer"]), "int4_layers": n_int4,
            "gather_layers": len(forms["gather"]), "float_layers": forms["float"],
            "bytes": path.stat().st_size, "activation_quantized": quantized_inputs}


def _verify(model: nn.Module, example: torch.Tensor, path: Path, tolerance: float | None,
            activation_quantized: bool) -> dict:
    """onnxruntime against torch on `example`; UserError beyond `tolerance` (see export_onnx)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("verifying the export needs onnxruntime: pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": example.numpy()})[0]
    with torch.no_grad():
        want = model(example).numpy()
    diff, largest = float(abs(got - want).max()), float(abs(want).max())
    if tolerance is None:
        tolerance = 5e-2 if activation_quantized else 1e-4
    if diff > tolerance * max(largest, 1.0):
        raise UserError(f"onnxruntime disagrees with torch by {diff:.3g} (largest output {largest:.3g}); "
                        "the export is not faithful")
    return {"max_abs_diff": diff, "max_abs_output": largest}


def _write_metadata(path: str, recorded: dict) -> None:
    """The data set, input shape and normalisation the .dsz records, as ONNX metadata_props (`deepshrink.*`),
    so that a deployment reads its preprocessing from the model file."""
    import json

    import onnx

    graph = onnx.load(path)
    for key, value in recorded.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"deepshrink.{key}", json.dumps(value)
    onnx.save(graph, path)
