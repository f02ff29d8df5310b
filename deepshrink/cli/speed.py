"""`deepshrink speed`: latency, resident bytes and (with --data) top-1 of every run-time engine for one
packed model, beside the same network uncompressed in PyTorch eager and ONNX Runtime fp32.

    deepshrink speed model.dsz --batch 1 64 --threads 1 2
    deepshrink speed model.dsz --data cifar10 --data-root ~/.cache/deepshrink/cifar10-jpeg --json

With --json the last stdout line is one object whose `rows` hold, per engine, batch and thread count:
engine, batch, threads, median_ms, iqr_ms, resident_bytes, and top1 when --data is given. Progress
goes to stderr. Calibration images (for the integer engine's 8-bit points and ONNX Runtime's PTQ) are
a stratified subset of --data's training split; without --data, the random timing batch.
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("speed", help="latency, memory and top-1 of every run-time engine for a .dsz model",
                       description="Measure every available run-time engine for FILE.dsz side by side in one "
                                   "process: median and IQR latency over interleaved rounds, resident bytes, "
                                   "and top-1 on --data's test split when given.")
    p.add_argument("file", help="a packed .dsz file")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64], metavar="N", help="batch sizes (default: 1 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N", help="thread counts (default: 1)")
    p.add_argument("--engine", nargs="+", default=None, metavar="NAME",
                   help="engines to measure (default: every available one); torch-fp32 and onnxruntime-fp32 "
                        "are always added as references")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default: 20)")
    p.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="D",
                   help="one input's shape, e.g. 3 32 32 (default: --data's, else the model's own)")
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="calibration images from --data's training split (default: 512)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    from ..data import add_data_args

    add_data_args(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    from ..errors import UserError

    for name in ("batch", "threads"):
        bad = [n for n in getattr(args, name) if n < 1]
        if bad:
            raise UserError(f"--{name} values must be >= 1, got {bad[0]}")
    if args.rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {args.rounds}")
    if args.calibration < 1:
        raise UserError(f"--calibration must be >= 1, got {args.calibration}")
    if args.input_shape is not None and min(args.input_shape) < 1:
        raise UserError(f"--input-shape dimensions must be >= 1, got {args.input_shape}")
    if not Path(args.file).is_file():
        raise UserError(f"{args.file} does not exist")


def _engines(model, requested):
    """The engines to measure and {name: reason} for those left out."""
    from ..errors import UserError
    from ..runtime import ENGINES, available_engines, get_engine

    if requested is None:
        chosen = available_engines(model)
        return chosen, {e.name: e.unavailable_reason() or e.unsupported_reason(model)
                        for e in ENGINES.values() if e not in chosen}
    names = list(dict.fromkeys(["torch-fp32", "onnxruntime-fp32", *requested]))
    chosen = [get_engine(name) for name in names]
    for engine in chosen:
        reason = engine.unavailable_reason() or engine.unsupported_reason(model)
        if reason:
            raise UserError(f"engine {engine.name} cannot run this model: {reason}")
    return chosen, {}


def run(args) -> int:
    from ..api import load
    from ..errors import UserError
    from ..runtime.measure import measure, speed_data

    _check(args)
    model = load(args.file).eval()
    calibration, test_batches, data_shape = (None, None, None) if not args.data else speed_data(
        args.data, args.data_root, args.calibration, args.download)
    shape = tuple(args.input_shape or data_shape or getattr(model, "default_input_size", None) or ())
    if not shape:
        raise UserError("the model does not say its input size; give --input-shape C H W or --data")
    engines, skipped = _engines(model, args.engine)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    for name, reason in skipped.items():
        log(f"skipped {name}: {reason}")
    rows = measure(model, engines, args.batch, args.threads, shape, args.rounds, calibration, test_batches, log)
    _print_table(rows, sys.stderr if args.json else sys.stdout)
    if args.json:
        import torch

        print(json.dumps({"model": str(args.file), "file_bytes": Path(args.file).stat().st_size,
                          "input_shape": list(shape), "data": args.data, "rounds": args.rounds,
                          "calibration_images": 0 if calibration is None else len(calibration),
                          "skipped": skipped, "torch": torch.__version__, "machine": platform.machine(),
                          "rows": [row.as_dict() for row in rows]}))
    return 0


def _print_table(rows, stream) -> None:
    print(f"{'engine':<24} {'batch':>5} {'threads':>7} {'median ms':>10} {'IQR ms':>8} {'resident B':>12} "
          f"{'top-1':>6}", file=stream)
    for row in rows:
        top1 = "" if row.top1 is None else f"{row.top1:.2f}"
        print(f"{row.engine:<24} {row.batch:>5} {row.threads:>7} {row.median_ms:>10.3f} {row.iqr_ms:>8.3f} "
              f"{row.resident_bytes:>12,} {top1:>6}", file=stream)
