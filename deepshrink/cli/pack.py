"""`deepshrink pack`: write a model as a `.dsz` file at its real bit width.

    deepshrink pack runs/bwn -o model.dsz                    # a run folder (its model.dsz) re-packed
    deepshrink pack model.dsz -o small.dsz --fp16 --entropy  # a .dsz with other options
    deepshrink pack resnet20.pt --model resnet20 --model-args shortcut=B -o float.dsz  # a float model
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("pack", help="pack a run folder, .dsz or float checkpoint into a .dsz file",
                       description="Write SRC (a run folder holding model.dsz, a .dsz file, or a plain checkpoint "
                                   "with --model) as a .dsz file with the given options.")
    p.add_argument("src", help="run folder, .dsz file, or .pt checkpoint (with --model)")
    p.add_argument("-o", "--output", required=True, help="the .dsz file to write")
    p.add_argument("--model", help="registered model name, for a plain checkpoint")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V", help="e.g. shortcut=B num_classes=10")
    p.add_argument("--fp16", action="store_true", help="store float tensors as fp16 (default fp32)")
    p.add_argument("--bf16", action="store_true", help="store float tensors as bf16")
    p.add_argument("--entropy", action="store_true", help="entropy-code the code streams (rANS / zstd)")
    p.add_argument("--ternary-base3", action="store_true", help="ternary codes at 1.6 bits (5 per byte)")
    p.add_argument("--json", action="store_true", help="print the size report as JSON")
    p.set_defaults(func=run)


def source_model(src: str, model_name: str | None, model_args: list[str]):
    """The model SRC names: a run folder's model.dsz, a .dsz file, or --model + a plain checkpoint."""
    from ..packing import load
    from ..pipeline import build_model

    path = Path(src)
    if model_name:
        if not path.is_file():
            raise UserError(f"checkpoint {src} does not exist")
        return build_model(model_name, model_args, str(path))
    if path.is_dir():
        if not (path / "model.dsz").is_file():
            raise UserError(f"run folder {src} holds no model.dsz; run `deepshrink compress` first")
        path = path / "model.dsz"
    if not path.is_file():
        raise UserError(f"{src} does not exist")
    if path.suffix in (".pt", ".pth"):
        raise UserError(f"{src} is a plain checkpoint: say which network it is with --model NAME")
    return load(path)


def run(args) -> int:
    from ..packing import format_report, save

    if args.fp16 and args.bf16:
        raise UserError("choose one of --fp16 and --bf16")
    model = source_model(args.src, args.model, args.model_args)
    float_dtype = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    report = save(model, args.output, float_dtype=float_dtype, ternary_base3=args.ternary_base3,
                  entropy=args.entropy)
    print(json.dumps(report) if args.json else format_report(report))
    return 0
