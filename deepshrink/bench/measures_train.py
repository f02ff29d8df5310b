"""Row measures of what training and packing cost: a training step's time, and the row's file re-packed.

Registered here (see `deepshrink.bench.measures` for how a suite asks for them):
- `train_step_seconds`: one training step of the row's method against the float model's, interleaved in one
  process. Settings: `{train_step_seconds: {batch_size: 128, rounds: 20, warmup: 3, threads: 1}}` (threads
  left out: the bench process's own).
- `pack_variants`: the row's file re-packed with the entropy stage and base-3 ternary codes (bytes, and the
  Shannon bound of its code streams), and once more with its float tensors in fp16 (bytes, and that file's
  top-1 on the suite's evaluation images).

Which model a training step runs: the row's packed file holds the inference form (codes and scales), which
no method trains. The measure rebuilds the training form from the row's resolved recipe (`recipe.yaml` in
the row's folder, written by `pipeline.run_compress`) and the suite's base, as `compress` builds it before
its first step (`deepshrink.training_form`: the same layers swapped, quantizers initialised from one batch).
It is untrained: a step's cost depends on the layers and quantizers, not on the values they hold.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

from ..errors import UserError
from .measures import MeasureContext, register_measure

ROW_RECIPE = "recipe.yaml"  # the resolved recipe pipeline.run_compress writes into the row's folder


def _ms(field: str):
    return lambda record: "—" if record.get(field) is None else f"{1e3 * record[field]:.1f} ms"


# images per step, timed rounds, untimed rounds first, torch threads (0, the default: the process's own)
@register_measure("train_step_seconds", settings={"batch_size": 128, "rounds": 20, "warmup": 3, "threads": 0},
                  figures={"train_step_seconds": ("train step", _ms("train_step_seconds")),
                           "float_train_step_seconds": ("float step", _ms("float_train_step_seconds")),
                           "train_step_vs_float": ("x float step", "{:.2f}")})
def train_step_seconds(ctx: MeasureContext) -> dict:
    """Median seconds of one training step (forward, cross-entropy, backward, SGD step) of the row's method
    and of the float base, interleaved round by round in one process, so load on the machine hits both alike.

    The method's model is its training form rebuilt from the row's recipe on the base, untrained (a step's
    cost does not depend on the values). Task loss only: a recipe's distillation teacher and a method's
    training hooks are not in the step. The images are the first `batch_size` evaluation images. Rows of
    methods that train no form of their own (layer-wise, pruning, fp32) get no figure."""
    from .. import api
    from ..config import load_recipe

    path = ctx.row_dir / ROW_RECIPE
    if not path.is_file():
        return {}
    settings = ctx.settings
    inputs, labels = _first_images(ctx.eval_batches(), settings["batch_size"])
    device = next(ctx.base.parameters()).device
    inputs, labels = inputs.to(device), labels.to(device)
    quantized = api.training_form(ctx.base, load_recipe(str(path)), (inputs, labels))
    if quantized is None:
        return {}
    models = {"float": copy.deepcopy(ctx.base).train(), "method": quantized}
    with torch.no_grad():  # labels within the model's classes (a suite's labels need not be its classes)
        labels = labels % models["float"](inputs[:1]).shape[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"] or threads)
    try:
        times = _interleaved_steps(models, inputs, labels, settings["warmup"], settings["rounds"])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    method, base = statistics.median(times["method"]), statistics.median(times["float"])
    return {"train_step_seconds": round(method, 7), "float_train_step_seconds": round(base, 7),
            "train_step_vs_float": round(method / base, 3), "train_step_batch": int(inputs.shape[0]),
            "train_step_rounds": settings["rounds"], "train_step_threads": used}


def _first_images(batches, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` (inputs, labels) of the evaluation batches, as one batch."""
    inputs, labels, have = [], [], 0
    for batch in batches:
        inputs.append(batch[0])
        labels.append(batch[1])
        have += len(batch[0])
        if have >= count:
            return torch.cat(inputs)[:count], torch.cat(labels)[:count]
    raise UserError(f"train_step_seconds: batch_size {count} is more than the suite's {have} evaluation images; "
                    "give a smaller batch_size")


def _interleaved_steps(models: dict, inputs, labels, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each timed step per model; each round steps every model once, in the same order."""
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for name, m in models.items()}
    times = {name: [] for name in models}
    for round_index in range(warmup + rounds):
        for name, model in models.items():
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _bytes(field: str):
    return lambda record: "—" if record.get(field) is None else f"{record[field]:,} B"


@register_measure("pack_variants", figures={
    "entropy_file_bytes": ("entropy-coded file", _bytes("entropy_file_bytes")),
    "shannon_code_bytes": ("codes' Shannon bound", _bytes("shannon_code_bytes")),
    "fp16_file_bytes": ("+ fp16 floats", _bytes("fp16_file_bytes")),
    "fp16_top1": ("top-1 fp16 file", "{:.2f}")})
def pack_variants(ctx: MeasureContext) -> dict:
    """The row's file re-packed with the entropy stage and base-3 ternary codes (its size, and the Shannon
    bound of its code streams), then with float tensors (BatchNorm, kept layers, scales) in fp16 as well: its
    size, and its top-1 on the suite's evaluation images.

    The re-packed files are kept beside the row's `model.dsz` (`model-entropy.dsz`, `model-fp16.dsz`); the
    entropy stage is lossless, fp16 is not, hence the second top-1."""
    from .. import api
    from ..packing import load, save

    packed = ctx.row_dir / "model.dsz"
    coded = save(load(packed), ctx.row_dir / "model-entropy.dsz", entropy=True, ternary_base3=True)
    half = save(load(packed), ctx.row_dir / "model-fp16.dsz", float_dtype="fp16", entropy=True,
                ternary_base3=True)
    top1 = api.evaluate(load(ctx.row_dir / "model-fp16.dsz"), ctx.eval_batches(), task="evaluate fp16 file")["top1"]
    return {"entropy_file_bytes": coded["totals"]["file_bytes"],
            "shannon_code_bytes": round(coded["totals"]["shannon_code_bytes"]),
            "fp16_file_bytes": half["totals"]["file_bytes"], "fp16_top1": top1}
