"""The one driver of every layer-wise method: capture -> statistics -> solve -> write back -> next layer.

A method derives from `LayerwiseMethod` and overrides `solve` (and, where it needs to, the
`prepare` / `after_layer` / `finish` steps). The driver:

1. materialises the calibration batches once (`ctx.calib_data`, e.g. 1% of the training set);
2. visits the selected layers in execution order; for each, runs the calibration batches through the
   network compressed so far (`inputs="compressed"`, default) or the original network
   (`inputs="original"`, as in the L-OBS / L-DNQ papers), stopping the forward pass at the layer, and
   accumulates H = X X^T / N (hessian.py);
3. calls `solve(name, layer, weight, hessian, cfg)` with the weight as (G, R, D) float64 and, for a
   layer with a bias, H's Schur complement: the bias is then moved to its optimum for the new weight;
4. writes the decoded weight back, keeps the `EncodedWeight` for `convert`;
5. re-estimates BatchNorm statistics on the calibration data (`reestimate_bn`, default on).

Under torchrun (`engine.distributed`) every rank reads all calibration batches (1% of the training set)
but captures only its shard (batches rank, rank + N, ...): Hessians, their sample counts and the
BatchNorm statistics are summed over ranks with all-reduce, so N processes build what one builds, up
to summation order. Rank 0 alone solves each layer and broadcasts its solution, so every rank writes
back the same weight (even where two machines' LAPACK builds would round differently) and the codes
equal one process's. Distillation steps (PQ's `layer_finetune_steps` and `global_distill_steps`,
L-DNQ's `cascade_steps`) are not sharded: every rank runs them on all batches, as one process does.
PQ's k-means clusters the weights under the metric H, not the activations, so the all-reduced H is
all it needs.

Example::

    result = deepshrink.compress(model, {"method": "lobs", "params": {"sparsity": 0.7}},
                                 calib_data=calib_loader)
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine import distributed
from ..errors import UserError
from ..methods import CompressContext, Method
from ..nn import EncodedWeight, compress_layer, set_module
from ..progress import Progress
from . import hessian as hess
from .capture import InputCapture, chunked_columns, execution_order, weight_matrix
from .stream import LayerInputs


@dataclass
class LayerwiseConfig:
    """Options every layer-wise method shares.

    damp: fraction of mean(diag H) added to H's diagonal before inverting (>= 0).
    inputs: "compressed" feeds each layer the inputs of the network compressed so far;
        "original" those of the original network.
    reestimate_bn: update BatchNorm running statistics on the calibration data at the end.
    bn_update: "shift" keeps the original running statistics and adds the change that compression causes
        on the calibration data (mean + (m_c - m_o), var * v_c / v_o; 500 images are too few to replace
        statistics gathered on the whole training set); "recompute" replaces them outright.
    max_samples: input columns (conv patches) used per calibration batch for H (None = all).
    cache_inputs: keep the calibration inputs of the current block so that each layer runs only its
        block, not the network up to it (stream.py; costs one block input per calibration image).
    """

    damp: float = 0.01
    inputs: str = "compressed"
    reestimate_bn: bool = True
    bn_update: str = "shift"
    max_samples: int | None = 8192
    cache_inputs: bool = True

    def __post_init__(self):
        if not (self.damp >= 0 and math.isfinite(self.damp)):
            raise UserError(f"damp must be a finite number >= 0, got {self.damp}")
        if self.inputs not in ("compressed", "original"):
            raise UserError(f"inputs must be 'compressed' or 'original', got {self.inputs!r}")
        if self.bn_update not in ("shift", "recompute"):
            raise UserError(f"bn_update must be 'shift' or 'recompute', got {self.bn_update!r}")
        if self.max_samples is not None and int(self.max_samples) < 1:
            raise UserError(f"max_samples must be >= 1 or null, got {self.max_samples}")


@dataclass
class LayerSolution:
    """What `solve` returns: the new weight (G, R, D) and its encoding in the layer's shape."""

    weight: torch.Tensor
    encoded: EncodedWeight
    info: dict = field(default_factory=dict)


def calibration_batches(data, device=None) -> list[torch.Tensor]:
    """The calibration inputs as a list of float tensors (labels dropped), read once."""
    if data is None:
        raise UserError("layer-wise methods need calibration data (calib_data=..., e.g. 1% of the train set)")
    batches = []
    total = len(data) if hasattr(data, "__len__") else None
    with Progress("calibration", total, "batch", enabled=distributed.is_main_process()) as progress:
        for item in data:
            inputs = item[0] if isinstance(item, (tuple, list)) else item
            batches.append(inputs.to(device) if device is not None else inputs)
            progress.update()
    if not batches:
        raise UserError("the calibration data is empty")
    return batches


def reestimate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running mean/var as the plain average over `batches`.

    Under torchrun each rank passes its shard; the per-batch averages are then combined over ranks,
    weighted by each rank's batch count (the same average, up to rounding)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training = model.training
    saved = [(m, m.momentum) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    with torch.no_grad():
        for inputs in batches:
            model(inputs)
    for m, momentum in saved:
        m.momentum = momentum
    if distributed.is_distributed():
        _average_bn_over_ranks(norms)
    model.train(was_training)


def _average_bn_over_ranks(norms) -> None:
    """Running mean/var = the average over every rank's batches of the batch statistics."""
    for m in norms:
        batches = m.num_batches_tracked.to(torch.float64).reshape(1)
        mean, var = m.running_mean.double() * batches, m.running_var.double() * batches
        distributed.all_reduce_sum(mean, var, batches)
        m.running_mean.copy_(mean / batches)
        m.running_var.copy_(var / batches)
        m.num_batches_tracked.fill_(int(batches))


class _ChannelStats:
    """Per-channel mean and variance of a module's input over every calibration sample (float64 sums)."""

    def __init__(self):
        self.count, self.sum, self.sumsq = 0, 0.0, 0.0

    def __call__(self, x):
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)  # (C, N*H*W)
        self.count += flat.shape[1]
        self.sum = self.sum + flat.sum(1)
        self.sumsq = self.sumsq + (flat * flat).sum(1)

    def all_reduce(self) -> None:
        """Add every rank's count and sums (under torchrun; a no-op in one process)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        distributed.all_reduce_sum(count, self.sum, self.sumsq)
        self.count = int(count)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean**2).clamp(min=0) * self.count / max(1, self.count - 1)
        return mean, var


def _stats_of(model: nn.Module, names: list[str], batches) -> dict:
    """{name: (mean, var)} of the inputs of modules `names`, in one pass over `batches`."""
    stats = {name: _ChannelStats() for name in names}
    captures = [InputCapture(model.get_submodule(name), stats[name], stop=False) for name in names]
    for capture in captures:
        capture.__enter__()
    try:
        captures[0].run(model, batches)
    finally:
        for capture in captures:
            capture.__exit__()
    for stat in stats.values():
        stat.all_reduce()
    return {name: stat.result() for name, stat in stats.items()}


def correct_bn(model: nn.Module, reference: nn.Module, batches, cache: bool = True) -> None:
    """BN statistics = the original's, shifted by what compression changes on the calibration data.

    BatchNorms are corrected one at a time in execution order, each measured after the earlier ones
    are corrected: running_mean += m_c - m_o, running_var *= v_c / v_o (m, v over all samples).
    Under torchrun each rank passes its shard of the batches; the sums behind m and v are all-reduced.
    `cache`: run each BatchNorm's block on cached block inputs (stream.py), not the network up to it.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.running_mean is not None]
    if not names:
        return
    model.eval()
    original = _stats_of(reference, names, batches)
    stream = LayerInputs(model, batches, range(len(batches)), cache=cache)
    with Progress("BatchNorm correction", len(names), "layer", enabled=distributed.is_main_process()) as progress:
        for name in execution_order(model, names, batches[0]):
            norm = model.get_submodule(name)
            stat = _ChannelStats()
            for _, x in stream.inputs(name):
                stat(x)
            stat.all_reduce()
            (mean_c, var_c), (mean_o, var_o) = stat.result(), original[name]
            ratio = torch.where(var_o > 1e-12, var_c / var_o.clamp(min=1e-12), torch.ones_like(var_o))
            norm.running_mean += (mean_c - mean_o).to(norm.running_mean.dtype)
            norm.running_var *= ratio.to(norm.running_var.dtype)
            progress.update()


class LayerwiseMethod(Method):
    """Base of layer-wise methods: subclasses implement `solve` (see the module docstring)."""

    kind = "layerwise"
    needs_hessian = True
    needs_reference = False  # keep an unmodified copy of the model (teacher) in self.reference

    def __init__(self, recipe, layers):
        super().__init__(recipe, layers)
        self.encodings: dict[str, EncodedWeight] = {}  # per layer, as solved
        self.report: dict[str, dict] = {}  # per layer: seconds, bits, the solver's figures
        self.reference: nn.Module | None = None  # the model before compression, where a method needs it
        self._teacher_outputs: list[torch.Tensor] | None = None  # reference outputs per batch, made once
        self._inputs: dict[int, LayerInputs] = {}  # per model whose layer inputs are read (id -> stream)
        self.cache_fallbacks = 0  # blocks whose layers were read by whole-network passes (stream.py)

    def training_epochs(self) -> float:
        """Layer-wise methods read the calibration subset only, not `train.epochs`."""
        return 0

    def solve(self, name: str, layer: nn.Module, weight: torch.Tensor, hessian: torch.Tensor | None,
              cfg) -> LayerSolution:
        """Compress one layer: `weight` (G, R, D) float64, `hessian` (G, D, D) float64 or None."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
        """Before the first layer (e.g. fold BN, compute global thresholds); returns the model."""
        return model

    def after_layer(self, model: nn.Module, name: str, batches: list[torch.Tensor]) -> None:
        """After layer `name` is written back (e.g. fine-tuning); default: nothing."""

    def finish(self, model: nn.Module, batches: list[torch.Tensor], ctx: CompressContext) -> None:
        """After the last layer and BN re-estimation (e.g. global fine-tuning); default: nothing."""

    # ------------------------------------------------------------------ the driver
    def compress(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        batches = calibration_batches(ctx.calib_data, ctx.device)
        shard = [batches[i] for i in distributed.shard(len(batches))]  # all of them in one process
        model.eval()
        self.encodings, self.report, self._teacher_outputs, self._inputs = {}, {}, None, {}
        model = self.prepare(model, batches)
        shift_bn = self.config.reestimate_bn and self.config.bn_update == "shift"
        self.reference = copy.deepcopy(model).eval() if (self.needs_reference or shift_bn
                                                         or self.config.inputs == "original") else None
        source = self.reference if self.config.inputs == "original" else model
        order = execution_order(model, list(self.layer_configs), batches[0])
        with Progress(self.method_name, len(order), "layer", enabled=distributed.is_main_process()) as progress:
            for name in order:
                progress.item(name)
                self._compress_layer(model, source, name, batches)
                report = self.report[name]
                progress.update(note=f"{name}: {report['kind']}, {report['bits_per_weight']:.2f} bits/weight, "
                                     f"{report['seconds']:.1f} s")
        self.cache_fallbacks = sum(stream.fallbacks for stream in self._inputs.values())
        self._inputs = {}  # frees the cached block inputs
        if shift_bn:
            correct_bn(model, self.reference, shard, cache=self.config.cache_inputs)
        elif self.config.reestimate_bn:
            reestimate_bn(model, shard)
        self.finish(model, batches, ctx)
        model.deepshrink_report = self.summary()
        return model

    def _compress_layer(self, model: nn.Module, source: nn.Module, name: str, batches) -> None:
        """Capture, statistics, solve, write back and `after_layer` for layer `name`; fills its report."""
        start = time.perf_counter()
        layer = model.get_submodule(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise UserError(f"layer {name!r} is a {type(layer).__name__}; layer-wise methods take Conv2d/Linear")
        cfg = self.layer_configs[name]
        hessian = self.layer_hessian(source, name, layer, batches) if self.needs_hessian else None
        self._solve_and_write(name, layer, hessian, cfg)
        self.after_layer(model, name, batches)
        encoded = self.encodings[name]
        self.report[name] = {"seconds": time.perf_counter() - start, "numel": encoded.numel,
                             "bits_per_weight": encoded.packed_bits() / encoded.numel,
                             "kind": encoded.kind, **self.report.get(name, {})}

    def layer_hessian(self, source: nn.Module, name: str, layer: nn.Module, batches) -> torch.Tensor:
        """H = X X^T / N of `name`'s inputs in `source` over the calibration batches, (G, D', D').

        Each rank captures its shard of `batches` (all of them in one process) and the sums are all-reduced.
        """
        hooked = source.get_submodule(name)
        groups, _, dim = weight_matrix(layer).shape
        acc = hess.HessianAccumulator(groups, dim, bias=layer.bias is not None,
                                      max_samples=self.config.max_samples, seed=len(self.report))
        stream = self._inputs.get(id(source))
        if stream is None or stream.model is not source or stream.batches is not batches:
            stream = self._inputs[id(source)] = LayerInputs(source, batches, distributed.shard(len(batches)),
                                                            cache=self.config.cache_inputs)
        for index, x in stream.inputs(name):
            acc.start_batch(index)  # batch i keeps the same columns whichever rank captures it
            for cols in chunked_columns(hooked, x):
                acc.add(cols)
        acc.all_reduce()
        return acc.hessian(f"layer {name!r}")

    def _solve_and_write(self, name: str, layer: nn.Module, hessian, cfg) -> None:
        weight = weight_matrix(layer).to(torch.float64)  # (G, R, D)
        gain = None
        if hessian is not None and layer.bias is not None:
            hessian, gain = hess.schur_free(hessian, 1, self.config.damp)
        # rank 0 solves; its solution reaches every rank, so all ranks go on from the same weights
        solution = self.solve(name, layer, weight, hessian, cfg) if distributed.is_main_process() else None
        solution = distributed.broadcast_object(solution)
        if tuple(solution.encoded.shape) != tuple(layer.weight.shape):
            raise AssertionError(f"{name}: encoding shape {solution.encoded.shape} != {tuple(layer.weight.shape)}")
        new_weight = solution.encoded.dequantize().to(layer.weight.device, layer.weight.dtype)
        if gain is not None:
            delta = weight_matrix(_Holder(new_weight, layer)) - weight
            bias_shift = -(gain @ delta.transpose(1, 2)).reshape(-1)  # (G, 1, R) -> (out,)
            layer.bias.data += bias_shift.to(layer.bias.dtype)
        layer.weight.data.copy_(new_weight)
        self.encodings[name] = solution.encoded
        self.report[name] = dict(solution.info)

    def summary(self) -> dict:
        """Per-layer report plus totals: bits per weight over the compressed layers, seconds."""
        total_bits = sum(r["bits_per_weight"] * r["numel"] for r in self.report.values())
        total = sum(r["numel"] for r in self.report.values())
        return {"method": self.method_name, "layers": self.report,
                "bits_per_weight": total_bits / max(1, total),
                "compression_ratio": 32.0 * total / max(1.0, total_bits),
                "seconds": sum(r["seconds"] for r in self.report.values()),
                "input_cache_fallbacks": self.cache_fallbacks}

    def convert(self, model: nn.Module) -> nn.Module:
        """Each compressed layer becomes a CompressedConv2d/Linear holding its EncodedWeight."""
        for name, encoded in self.encodings.items():
            set_module(model, name, compress_layer(model.get_submodule(name), encoded))
        return model


class _Holder:
    """A stand-in with `.weight` and `.groups` so `weight_matrix` can reshape a plain tensor."""

    def __init__(self, weight: torch.Tensor, like: nn.Module):
        self.weight = weight
        self.groups = getattr(like, "groups", 1)
