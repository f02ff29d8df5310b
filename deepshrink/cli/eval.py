"""`deepshrink eval`: top-1 / top-5 accuracy of a checkpoint or a packed `.dsz` file on a data set.

    deepshrink eval --model resnet20 --model-args shortcut=B --checkpoint resnet20.pt --data cifar10 \
        --data-root ~/.cache/deepshrink/cifar10-jpeg
    deepshrink eval model.dsz --data-root ...            # the data set the file records
    deepshrink eval runs/resnet20/best.pt                 # a `deepshrink train` checkpoint records its model too
    deepshrink eval model.int8.onnx                       # a `deepshrink export` file, run by ONNX Runtime
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint, packed model or exported ONNX file on a data set",
                       description="Evaluate FILE.dsz (rebuilt by deepshrink.load), FILE.onnx (written by "
                                   "`deepshrink export`, run by ONNX Runtime) or a .pt checkpoint on the test "
                                   "split of --data. --model and --data default to what the file records (a "
                                   ".dsz or .onnx, or a checkpoint written by `deepshrink train`); a plain "
                                   "state_dict needs --model.")
    p.add_argument("file", nargs="?", help="a packed .dsz file, an exported .onnx file or a .pt checkpoint")
    p.add_argument("--model", help="registered model name, for a .pt checkpoint that does not record it")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V", help="e.g. shortcut=B")
    p.add_argument("--checkpoint", help="plain state_dict or deepshrink checkpoint (.pt)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="split to evaluate (default: test); val is held out of train, train is what remains")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--workers", type=int, default=2, help="decoding processes for large image folders")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line at the end")
    from ..data import add_data_args

    add_data_args(p)  # default: the data set the file records
    p.set_defaults(func=run)


def checkpoint_of(args) -> str | None:
    """The .pt checkpoint to evaluate (FILE or --checkpoint), or None for a .dsz file."""
    from ..errors import UserError

    if args.file and (args.checkpoint or args.model or Path(args.file).suffix in (".pt", ".pth")):
        if args.checkpoint:
            raise UserError("give the checkpoint once: either FILE or --checkpoint")
        return args.file
    return args.checkpoint


def load_model_for_eval(args, num_classes: int, in_channels: int):
    """The model to evaluate, from a .dsz file or from a .pt checkpoint (--model, or the one it records)."""
    from ..errors import UserError
    from ..pipeline import build_model

    checkpoint = checkpoint_of(args)
    if checkpoint:  # run() filled --model from the checkpoint's record, or refused it
        return build_model(args.model, args.model_args, checkpoint, num_classes=num_classes,
                           in_channels=in_channels), checkpoint
    if not args.file:
        raise UserError("nothing to evaluate: give FILE.dsz, or FILE.pt (with --model NAME unless `deepshrink "
                        "train` wrote it)")
    if not Path(args.file).is_file():
        raise UserError(f"{args.file} does not exist")
    if Path(args.file).suffix == ".onnx":
        from ..runtime.onnx_file import OnnxModel

        if args.device not in (None, "cpu"):
            raise UserError(f"an ONNX file runs on ONNX Runtime's CPU kernels here; drop --device {args.device}")
        return OnnxModel(args.file), args.file
    from ..api import load

    return load(args.file), args.file


def run(args) -> int:
    from ..data import dataset_from_args, make_loader
    from ..engine import evaluate

    if args.batch_size < 1:
        from ..errors import UserError

        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    checkpoint = checkpoint_of(args)
    if checkpoint and not (args.model and args.data):
        from .recorded import fill_from_checkpoint

        fill_from_checkpoint(args, checkpoint)
    elif not args.data and args.file and Path(args.file).suffix == ".dsz" and Path(args.file).is_file():
        from ..packing.format import recorded_data

        args.data = recorded_data(args.file).get("name")
    elif not args.data and args.file and Path(args.file).suffix == ".onnx" and Path(args.file).is_file():
        from ..runtime.onnx_file import recorded_data

        args.data = recorded_data(args.file).get("name")
    if args.split == "test":
        dataset = dataset_from_args(args, "test")
    else:
        from ..data.splits import train_val_split

        dataset = train_val_split(dataset_from_args(args, "train"))[args.split == "val"]
    model, source = load_model_for_eval(args, dataset.num_classes, dataset.in_channels)
    loader = make_loader(dataset, args.batch_size, train=False, num_workers=args.workers)
    metrics = evaluate(model, loader, device=args.device)
    metrics.update(source=str(source), data=args.data, split=args.split)
    summary = (f"{source} on {args.data} {args.split} ({metrics['n']} images): top-1 {metrics['top1']:.2f}% "
               f"top-5 {metrics['top5']:.2f}% loss {metrics['loss']:.4f}")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(metrics))
    return 0
