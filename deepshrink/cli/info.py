"""`deepshrink info`: parameters, MACs, BOPs and bytes per layer of a model or a packed file.

    deepshrink info --model resnet20 --input-size 32
    deepshrink info --model resnet20 --model-args shortcut=B --json
    deepshrink info model.dsz                  # a packed model: bytes at its real bit widths
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="per-layer params, MACs, BOPs and bytes of a model",
                       description="Profile a registered model (--model) or a packed .dsz file with one forward "
                                   "pass: a per-layer table of parameters, MACs, BOPs (MACs x weight bits x "
                                   "activation bits) and bytes at each layer's precision, and totals.")
    p.add_argument("file", nargs="?", help="a packed .dsz model (instead of --model)")
    p.add_argument("--model", help="registered model name, e.g. resnet20, resnet18")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V", help="e.g. shortcut=B")
    p.add_argument("--input-size", type=int, default=None, metavar="H",
                   help="square input side (default: the model's own, e.g. 32 for CIFAR models, 224 for ImageNet)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="output classes (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (last line of stdout)")
    p.set_defaults(func=run)


def _load_model(args):
    if args.file and args.model:
        raise UserError("give either a .dsz FILE or --model, not both")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"no such file: {path}")
        import deepshrink

        try:
            return deepshrink.load(path)
        except ImportError as exc:
            raise UserError(f"cannot read {path}: this build has no .dsz reader ({exc})") from exc
    if not args.model:
        raise UserError("name a model (--model resnet20) or a packed file (deepshrink info model.dsz)")
    from ..pipeline import build_model, parse_kv

    model_args = parse_kv(args.model_args)
    if args.input_size and "input_size" in _constructor_args(args.model):
        model_args.setdefault("input_size", args.input_size)  # models whose layers depend on it (lenet300)
    return build_model(args.model, model_args, None, num_classes=args.num_classes, in_channels=args.in_channels)


def _constructor_args(name: str) -> set[str]:
    from ..registry import MODELS

    return set(inspect.signature(MODELS.get(name)).parameters)


def _input_size(model, args) -> tuple[int, int, int]:
    default = getattr(model, "default_input_size", None)
    channels = args.in_channels or (default[0] if default else None)
    if args.input_size is None and default is None:
        raise UserError("this model has no default input size; pass --input-size (and --in-channels)")
    if channels is None:
        raise UserError("this model has no default input channels; pass --in-channels")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be a positive side length, got {args.input_size}")
    side = (args.input_size, args.input_size) if args.input_size else tuple(default[1:])
    return (channels, *side)


def run(args) -> int:
    from ..analysis import profile

    model = _load_model(args)
    report = profile(model, input_size=_input_size(model, args))
    if args.json:
        summary = report.to_dict()
        summary["model"] = args.model or str(args.file)
        print(json.dumps(summary))
    else:
        print(report.format_table())
    return 0
