"""`deepshrink export`: a `.dsz` file as ONNX, checked in onnxruntime.

    deepshrink export model.dsz -o model.onnx      # integer codes (int4 / int8) + DequantizeLinear, PQ as Gather
    deepshrink export model.dsz -o model.int8.onnx --integer --data cifar10   # the integer engine's graph
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
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 21, the first whose DequantizeLinear takes int4; below it codes are int8)")
    p.add_argument("--integer", action="store_true",
                   help="write the integer engine's graph instead (int8 codes, quantized activations: ONNX Runtime "
                        "runs QLinearConv / QLinearAdd), 8-bit activation ranges calibrated on --data's training "
                        "images (default: the data set the file records)")
    p.add_argument("--target-cpu", choices=("this", "vnni", "no-vnni"), default="this",
                   help="with --integer, the CPUs the graph is for: vnni (x86 with VNNI, or ARM) uses full 8-bit "
                        "weights, no-vnni (AVX2 only) keeps them within +-64 so that its 16-bit pair sums cannot "
                        "saturate, and runs anywhere (default: this CPU's kind)")
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="with --integer, calibration images from the training split (default: 512)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest onnxruntime-vs-torch difference, relative to the largest output (default 1e-4; "
                        "5e-2 with quantized activations, where float noise can flip a rounding)")
    from ..data import add_data_args

    add_data_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.integer:
        return _run_integer(args)
    if args.data or args.calibration != 512 or args.target_cpu != "this":
        raise UserError("--data, --calibration and --target-cpu are for --integer; add --integer or drop them")
    from ..packing.onnx_export import export_onnx

    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise UserError(f"--input-shape must be C,H,W integers, got {args.input_shape!r}") from None
    info = export_onnx(args.file, args.output, input_shape=shape, opset=21 if args.opset is None else args.opset,
                       verify=not args.no_verify, tolerance=args.tolerance)
    print(json.dumps(info))
    return 0


def _run_integer(args) -> int:
    """`--integer`: calibrate on the training split of --data (or the data set the file records), write, check."""
    from pathlib import Path

    from ..packing.format import recorded_data
    from ..runtime.integer_export import export_integer
    from ..runtime.measure import calibration_images

    if args.opset is not None or args.input_shape or args.tolerance is not None:
        raise UserError("--opset, --input-shape and --tolerance are for the weight-only graph; the integer graph "
                        "is opset 17, shaped by --data's images, checked by top-class agreement: drop them")
    if args.calibration < 1:
        raise UserError(f"--calibration must be >= 1, got {args.calibration}")
    if not Path(args.file).is_file():
        raise UserError(f"{args.file} does not exist")
    data = args.data or recorded_data(args.file).get("name")
    if not data:
        raise UserError(f"{args.file} records no data set, and --integer calibrates its 8-bit activation ranges "
                        "on training images: give --data NAME (and --data-root DIR)")
    images = calibration_images(data, args.data_root, args.calibration, args.download)
    info = export_integer(args.file, args.output, images, target=args.target_cpu, verify=not args.no_verify)
    print(json.dumps(info))
    return 0
