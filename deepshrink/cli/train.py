"""`deepshrink train`: train a registered model on a data set with the one training loop.

    deepshrink train --model lenet5 --data fashion-mnist --epochs 10 --out runs/lenet5
    deepshrink train ... --out runs/lenet5 --resume                  # continue from runs/lenet5/last.pt
    torchrun --nproc_per_node=2 -m deepshrink train ...               # DDP; --batch-size is per process
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

# flag -> TrainConfig field; flags left out keep the default (or the resumed run's value)
_TRAIN_FLAGS = {
    "epochs": (float, "epochs to train (fractions allowed, e.g. 0.5)"),
    "lr": (float, "peak learning rate"),
    "batch_size": (int, "batch size per process"),
    "eval_batch_size": (int, "batch size for evaluation"),
    "optimizer": (str, "sgd | adam | adamw"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay (conv/linear weights only)"),
    "schedule": (str, "constant | step | cosine | onecycle (stepped per iteration)"),
    "warmup": (float, "warm-up as a fraction of training"),
    "label_smoothing": (float, "label smoothing of the cross-entropy"),
    "seed": (int, "random seed"),
    "max_steps_per_epoch": (int, "cap the iterations of each epoch (smoke runs, throughput)"),
    "log_every": (int, "log a line every N iterations when stderr is not a terminal"),
}
_SWITCHES = {
    "deterministic": "deterministic kernels: a resumed run ends with the same weights",
    "channels_last": "channels-last memory format",
    "amp": "mixed precision (CUDA only)",
    "tensorboard": "also write TensorBoard events to OUT/tb",
}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a data set",
                       description="Train --model on --data; writes OUT/config.yaml, metrics.jsonl, curves.png, "
                                   "last.pt and best.pt. Under torchrun, trains data-parallel.")
    p.add_argument("--model", required=True, help="registered model name, e.g. lenet5, resnet20")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V", help="e.g. shortcut=B")
    p.add_argument("--base", help="initialise from this checkpoint (plain state_dict or deepshrink checkpoint)")
    p.add_argument("-o", "--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder at --out")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue an interrupted run (default: OUT/last.pt); its settings are kept unless "
                        "flags override them")
    for name, (kind, text) in _TRAIN_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    for name, text in _SWITCHES.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=text)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="turn off training augmentation")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--workers", type=int, default=2, help="decoding processes for large image folders")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line at the end")
    from ..data import add_data_args

    add_data_args(p, required=True)
    p.set_defaults(func=run)


def resolve_train_config(args, resumed: dict | None):
    """TrainConfig from the flags given, on top of the resumed run's settings (or the defaults)."""
    from ..config import TrainConfig, _build

    values = dict(resumed or {})
    for name in list(_TRAIN_FLAGS) + list(_SWITCHES) + ["augment"]:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return _build(TrainConfig, {k: v for k, v in values.items() if k in known}, "train")


def _resume_path(args) -> Path | None:
    from ..errors import UserError

    if args.resume is None:
        return None
    path = Path(args.out) / "last.pt" if args.resume is True else Path(args.resume)
    if not path.is_file():
        raise UserError(f"cannot resume: {path} does not exist (no earlier run in {args.out}?)")
    return path


def run(args) -> int:
    from ..data import data_record, dataset_from_args, make_loader
    from ..data.splits import train_val_split
    from ..engine import Trainer, distributed, evaluate, seed_everything
    from ..errors import UserError
    from .compress import remove_run_folder
    from ..engine.checkpoint import read_checkpoint
    from ..pipeline import build_model, parse_kv

    resume = _resume_path(args)
    out = Path(args.out)
    if resume is None and out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise UserError(f"{out} already holds a run; pass --overwrite to replace it, --resume to continue it, "
                            "or choose another --out")
        remove_run_folder(out, {"best.pt", "last.pt", "config.yaml", "metrics.jsonl", "curves.png", "final.json",
                                "tb"})
    resumed = read_checkpoint(resume).get("config") if resume else None
    config = resolve_train_config(args, resumed)
    distributed.init_from_env(args.device)
    main_process = distributed.is_main_process()
    try:
        train_set, val_set = train_val_split(dataset_from_args(args, "train"))
        test_set = dataset_from_args(args, "test")
        seed_everything(config.seed)  # --seed also fixes the initial weights
        model = build_model(args.model, args.model_args, args.base, num_classes=train_set.num_classes,
                            in_channels=train_set.in_channels)
        train = make_loader(train_set, config.batch_size, train=True, seed=config.seed, augment=config.augment,
                            rank=distributed.rank(), world_size=distributed.world_size(), num_workers=args.workers)
        val = make_loader(val_set, config.eval_batch_size, train=False, num_workers=args.workers)
        test = make_loader(test_set, config.eval_batch_size, train=False, num_workers=args.workers)
        meta = {"model": {"name": args.model, "args": parse_kv(args.model_args), "base": args.base},
                "data": {**data_record(args.data, train_set), "root": args.data_root, "train": len(train_set),
                         "val": len(val_set), "test": len(test_set)}}
        trainer = Trainer(model, train, val, config, run_dir=args.out, device=args.device, resume=resume, meta=meta)
        metrics = trainer.fit()
        # the one look at the test set: the final model, after every choice was made on val
        metrics.update({f"test_{k}": v for k, v in evaluate(trainer.model, test, trainer.device).items()})
        distributed.barrier()  # no rank tears the group down while another still talks to it
    finally:
        distributed.cleanup()
    if not main_process:
        return 0
    metrics.update(model=args.model, data=args.data, out=str(args.out))
    if args.out:
        (Path(args.out) / "final.json").write_text(json.dumps(metrics, indent=2) + "\n")
    summary = (f"{args.model} on {args.data}: val top-1 {metrics.get('val_top1', float('nan')):.2f}%, "
               f"test top-1 {metrics['test_top1']:.2f}% top-5 {metrics['test_top5']:.2f}% "
               f"after {metrics['steps']} steps, "
               f"{metrics.get('images_per_s', 0):.0f} img/s -> {args.out}")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(metrics))
    return 0
