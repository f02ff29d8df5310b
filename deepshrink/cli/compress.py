"""`deepshrink compress`: run a recipe on a model and data set, leave a run folder with model.dsz.

    deepshrink compress --recipe ldnq-l3 --base runs/lenet5/best.pt -o runs/ldnq  # model, data: as --base records
    deepshrink compress --method bwn --model resnet20 --model-args shortcut=B --base resnet20.pt \
        --data cifar10 -o runs/bwn                                            # a plain state_dict as --base
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml


def add_parser(sub) -> None:
    p = sub.add_parser("compress", help="compress a model with a recipe (QAT, layer-wise, pruning)",
                       description="Compress --model (optionally loaded from --base) on --data with a recipe; "
                                   "writes RUN/model.dsz, RUN/metrics.json, RUN/recipe.yaml and the training run.")
    p.add_argument("--recipe", help="recipe YAML file or built-in recipe name (see `deepshrink recipes`)")
    p.add_argument("--method", help="method name, instead of --recipe: the built-in recipe of that name if there "
                                     "is one (the method's best by validation), else its default parameters")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set weight_bits=4 --set train.epochs=2")
    p.add_argument("--model", help="registered model name (see `deepshrink info --help`); default: the one "
                                   "--base records")
    p.add_argument("--model-args", action="append", default=[], metavar="K=V",
                   help="model constructor arguments, e.g. shortcut=B")
    p.add_argument("--base", help="checkpoint to start from (a plain state_dict, with --model; or one "
                                  "`deepshrink train` wrote, which records its model and data set)")
    p.add_argument("-o", "--out", required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder at --out")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved run (model, data with its splits, device, processes, recipe with "
                        "every parameter) as YAML and exit without creating anything")
    p.add_argument("--train-subset", type=float, default=None,
                   help="train on a stratified subset: a ratio in (0, 1] or an image count")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/train/last.pt (same recipe and data)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line at the end")
    from ..data import add_data_args

    add_data_args(p)  # default: the data set --base records
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import distributed
    from ..pipeline import run_compress

    spec = spec_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
        return 0
    if spec.processes.rank == 0:  # under torchrun rank 0 owns the run folder
        check_out_dir(spec.out, spec.recipe, spec.resume, args.overwrite)
    try:
        metrics = run_compress(spec)
        distributed.barrier()  # no rank tears the group down while another still talks to it
    finally:
        distributed.cleanup()
    if "rank" in metrics:
        return 0
    summary = (f"{metrics['method']}: test top-1 {metrics['top1']:.2f}% (base {metrics.get('base_top1', float('nan')):.2f}%; "
               f"val {metrics['val_top1']:.2f}%), "
               f"{metrics['file_bytes']:,} bytes, {_size_against_fp32(metrics['ratio'])}, "
               f"compressed in {metrics['compress_seconds']:.1f} s -> {metrics['packed']}")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(metrics))
    return 0


def spec_from_args(args):
    """The run `deepshrink compress` flags describe (`deepshrink.spec.run_spec` validates it): --recipe
    FILE|NAME, or --method NAME: the built-in recipe named after the method if there is one (its best by
    validation), else its default parameters; --model and --data default to what --base
    records."""
    from ..config import method_default
    from ..errors import UserError
    from ..spec import run_spec

    if bool(args.recipe) == bool(args.method):
        raise UserError("give exactly one of --recipe FILE|NAME or --method NAME")
    return run_spec(args.recipe or method_default(args.method), overrides=args.overrides, model=args.model,
                    model_args=args.model_args, base=args.base, data=args.data, data_root=args.data_root,
                    download=args.download, train_subset=args.train_subset, out=args.out, device=args.device,
                    resume=args.resume)


def check_out_dir(out: Path, recipe, resume: bool, overwrite: bool) -> None:
    """Never mix two runs in one folder: an existing run is continued (--resume, same recipe only),
    replaced (--overwrite), or refused."""
    from ..errors import UserError

    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume:
        if not (out / "train" / "last.pt").is_file():
            raise UserError(f"nothing to resume: {out}/train/last.pt does not exist; run without --resume")
        from ..pipeline import saved_recipe_is

        if saved_recipe_is(out, recipe) is False:
            raise UserError(f"--resume: {out} was made by another recipe ({out / 'recipe.yaml'}); "
                            "resume it with that recipe, "
                            "or choose another --out")
        return
    if not held:
        return
    if not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
                        "pass --overwrite to replace it, --resume to continue it, or choose another --out")
    remove_run_folder(out, RUN_FILES)


RUN_FILES = {"recipe.yaml", "metrics.json", "model.dsz", "train"}


def remove_run_folder(out: Path, run_files: set[str]) -> None:
    """--overwrite: remove `out`, but only a folder a run wrote (it holds nothing but run files), so that a
    mistyped --out (the project folder, the home folder) is refused rather than deleted."""
    from ..errors import UserError

    foreign = sorted(p.name for p in out.iterdir() if p.name not in run_files)
    if foreign:
        raise UserError(f"--overwrite: {out} holds files no run writes ({', '.join(foreign[:4])}); "
                        "refusing to delete it: choose another --out")
    shutil.rmtree(out)


def _size_against_fp32(ratio: float) -> str:
    """'8.8x smaller than fp32', or, for settings that compress nothing, how much larger the file is."""
    if ratio >= 1:
        return f"{ratio:.1f}x smaller than fp32"
    return f"{1 / ratio:.2f}x LARGER than the fp32 weights (these settings compress nothing)"
