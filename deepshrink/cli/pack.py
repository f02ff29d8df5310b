"""`deepshrink pack`: write a model as a `.dsz` file at its real bit width.

    deepshrink pack runs/bwn -o model.dsz                    # a run folder (its model.dsz) re-packed
    deepshrink pack model.dsz -o small.dsz --fp16 --entropy  # a .dsz with other options
    deepshrink pack runs/resnet20/best.pt -o float.dsz         # a checkpoint `deepshrink train` wrote
    deepshrink pack resnet20.pt --model resnet20 --model-args shortcut=B -o float.dsz  # a plain state_dict
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("pack", help="pack a run folder, .dsz or float checkpoint into a .dsz file",
                       description="Write SRC (a run folder holding model.dsz, a .dsz file, or a .pt checkpoint) as "
                                   "a .dsz file with the given options. A checkpoint written by `deepshrink "
                                   "train` records its network; a plain state_dict needs --model.")
    p.add_argument("src", help="run folder, .dsz file, or .pt checkpoint")
    p.add_argument("-o", "--output", required=True, help="the .dsz file to write")
    p.add_argument("--model", help="registered model name, for a checkpoint that does not record it")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V", help="e.g. shortcut=B num_classes=10")
    p.add_argument("--fp16", action="store_true", help="store float tensors as fp16 (default fp32)")
    p.add_argument("--bf16", action="store_true", help="store float tensors as bf16")
    p.add_argument("--entropy", action="store_true", help="entropy-code the code streams (rANS / zstd)")
    p.add_argument("--ternary-base3", action="store_true", help="ternary codes at 1.6 bits (5 per byte)")
    p.add_argument("--json", action="store_true", help="print the size report as JSON")
    p.set_defaults(func=run)


def source_model(args):
    """(the model SRC names, the data set it records): a run folder's model.dsz, a .dsz file, or a .pt
    checkpoint (its network from --model, or from what `deepshrink train` recorded in it)."""
    from ..packing import load
    from ..packing.format import recorded_data
    from ..pipeline import build_model
    from .recorded import fill_from_checkpoint

    path = Path(args.src)
    if args.model or path.suffix in (".pt", ".pth"):
        if not path.is_file():
            raise UserError(f"checkpoint {args.src} does not exist")
        data = fill_from_checkpoint(args, path)
        return build_model(args.model, args.model_args, str(path)), data or None
    if path.is_dir():
        if not (path / "model.dsz").is_file():
            raise UserError(f"run folder {args.src} holds no model.dsz; run `deepshrink compress` first")
        path = path / "model.dsz"
    if not path.is_file():
        raise UserError(f"{args.src} does not exist")
    return load(path), recorded_data(path) or None


def run(args) -> int:
    from ..packing import format_report, save

    if args.fp16 and args.bf16:
        raise UserError("choose one of --fp16 and --bf16")
    model, data = source_model(args)
    float_dtype = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    report = save(model, args.output, float_dtype=float_dtype, ternary_base3=args.ternary_base3,
                  entropy=args.entropy, data=data)
    print(json.dumps(report) if args.json else format_report(report))
    return 0
