"""`deepshrink export`: a `.dsz` file as ONNX, checked in onnxruntime.

    deepshrink export model.dsz -o model.onnx      # integer codes (int4 / int8) + DequantizeLinear, PQ as Gather
"""
from __future__ import annotations

import json

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a packed .dsz file to ONNX (verified in onnxruntime)",
                       description="Write FILE.dsz as ONNX at its real size: integer codes (binary, ternary, "
                                   "uniform, pow2, sparse) as int4 / int8 initialisers + DequantizeLinear, PQ "
                                   "as codebook + Gather; a layer that must stay float is named in a warning "
                                   "with its bytes. Then run it in onnxruntime against the torch model.")
    p.add_argument("file", help="a packed .dsz file")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--input-shape", help="C,H,W of one input (default: the model's own)")
    p.add_argument("--opset", type=int, default=21,
                   help="ONNX opset (default 21, the first whose DequantizeLinear takes int4; below it codes are int8)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest onnxruntime-vs-torch difference, relative to the largest output (default 1e-4; "
                        "5e-2 with quantized activations, where float noise can flip a rounding)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..packing.onnx_export import export_onnx

    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise UserError(f"--input-shape must be C,H,W integers, got {args.input_shape!r}") from None
    info = export_onnx(args.file, args.output, input_shape=shape, opset=args.opset, verify=not args.no_verify)
    print(json.dumps(info))
    tolerance = args.tolerance if args.tolerance is not None else 5e-2 if info["activation_quantized"] else 1e-4
    if "max_abs_diff" in info and info["max_abs_diff"] > tolerance * max(info["max_abs_output"], 1.0):
        raise UserError(f"onnxruntime disagrees with torch by {info['max_abs_diff']:.3g} "
                        f"(largest output {info['max_abs_output']:.3g}); the export is not faithful")
    return 0
