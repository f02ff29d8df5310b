"""Defaults from what a checkpoint records: `eval` and `pack` given a file written by `deepshrink train`
need neither --model nor --data (see `deepshrink.engine.checkpoint.recorded_model`); `compress` takes the
same defaults in `deepshrink.spec.run_spec`, where every front end's run is resolved."""
from __future__ import annotations

from ..errors import UserError


def fill_from_checkpoint(args, path) -> dict:
    """Set what the flags left out of `args.model`, `args.model_args` and `args.data` (where the command
    has --data) to what the checkpoint at `path` records; flags given win, and --model-args add to the
    recorded arguments. Returns the recorded data set ({} when none).

    A file that records no architecture (a plain state_dict), given without --model, is a UserError
    naming the fix.

    Example::

        fill_from_checkpoint(args, "runs/lenet5/best.pt")  # args.model == "lenet5", args.data == "fashion-mnist"
    """
    from ..engine.checkpoint import read_checkpoint, recorded_model
    from ..pipeline import parse_kv

    arch, data = recorded_model(read_checkpoint(path))
    if hasattr(args, "data") and not args.data:
        args.data = data.get("name")
    if not args.model:
        if arch is None:
            raise UserError(f"{path} does not record its architecture (a plain state_dict); say which network "
                            "it is with --model NAME (and --model-args K=V as it was built)")
        args.model = arch["name"]
        args.model_args = {**arch["kwargs"], **parse_kv(args.model_args)}
    return data
