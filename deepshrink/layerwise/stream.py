"""The inputs of one module after another, in execution order, without re-running the network from its input.

A layer-wise method visits L layers and needs each one's inputs over the calibration batches. Running
the network from its first layer up to every layer costs about L/2 forward passes: for ResNet-50
(54 layers, 1,024 images at 224x224) ~220 TFLOP, hours on a 2-core CPU. `LayerInputs` caches the
inputs of the current *block* instead, the outermost of the layer and its ancestors whose parent is
an `nn.Sequential` or `nn.ModuleList` (a ResNet bottleneck, a transformer block, a VGG layer), and runs
only that block, stopped at the layer. When the next layer lies in a later block, the cache moves on
by running the finished block (and the siblings between, in the same container) on it, batch by batch
in place. Within a block, runs of it that pause before each layer and go on once the layer is solved
(block_runs.py) spare re-running its earlier layers for every later one. Counted in conv multiply-adds
on ResNet-50 over 16 batches of 64 (benchmarks/stream_passes.py), the layers' inputs cost 1.4 forward
passes and a BatchNorm correction 1.7 (2.2 and 3.2 with the block run up to each layer; 2.7 and 3.7
with that and every check on the whole first batch, before the probe below; 27 with no cache).

Nothing is assumed about the model's `forward`. Every check runs on a probe, the first PROBE_IMAGES
images of the first batch, which the cache carries along. Each time a block is entered, against a
forward pass of the whole network: the block must be called with one tensor and nothing else, the
advanced cache must equal the block's input there, and the block run from it must give the layer the
same input, bit for bit. Where a check fails, that block's batches come from whole-network passes, as
without a cache (correct, only slower; `fallbacks` counts them). For every layer, the probe's paused
run against the block run up to a hook on the layer: where they differ, or torch.fx cannot trace the
block, the block's layers are read by running it up to a hook, as before.

Contract: between `inputs` calls the caller may change only the modules of the current block and those
after it (the layer just solved, layers not solved yet); the layer-wise methods do.

Memory: the cache holds one block input per calibration batch (ResNet-50 at 224x224: at most
256 x 56 x 56 floats = 3.2 MB per image, 3.3 GB for 1,024 images), plus one batch being advanced.
Paused runs are kept only while they and the cache hold no more than the largest cache so far; the
others start again from the cache, so they never raise that bound.
`LayerwiseConfig.cache_inputs=False` turns it off.

Example::

    stream = LayerInputs(model, batches, indices=range(len(batches)))
    for index, x in stream.inputs("layer2.0.conv1"):
        ...   # x: the input of model.layer2[0].conv1 on batches[index]
"""
from __future__ import annotations

import torch
from torch import nn

from .block_runs import BlockGraph, BlockRun
from .capture import StopForward

_CONTAINERS = (nn.Sequential, nn.ModuleList)
PROBE_IMAGES = 2  # the checks run the network on this many images of the first batch, not on all of it


class _Unreached(Exception):
    """The module did not run during the forward pass."""


def input_of(root: nn.Module, module: nn.Module, x: torch.Tensor, watch: nn.Module | None = None):
    """The first input of `module` when `root(x)` runs (no grad), the pass stopped there.

    With `watch`, also returns how `watch` was first called, (args, kwargs), or None if it was not.
    """
    seen = {}

    def on_watch(_, args, kwargs):  # a copy: the forward pass may change its inputs in place
        seen.setdefault("watch", ([a.detach().clone() if torch.is_tensor(a) else a for a in args], kwargs))

    def on_module(_, args):
        seen["input"] = args[0].detach()
        raise StopForward

    handles = [] if watch is None else [watch.register_forward_pre_hook(on_watch, with_kwargs=True)]
    handles.append(module.register_forward_pre_hook(on_module))  # after `watch`'s: hooks run in order
    try:
        with torch.no_grad():
            root(x)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if "input" not in seen:
        raise _Unreached
    return (seen["input"], seen.get("watch")) if watch is not None else seen["input"]


class LayerInputs:
    """Inputs of modules of `model` over `batches[i]` for i in `indices` (see the module docstring)."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], indices, cache: bool = True):
        self.model, self.batches, self.indices = model, batches, list(indices)
        self.use_cache = cache
        self.block: str | None = None  # the block whose inputs `cache` holds
        self.cache: list[torch.Tensor] | None = None  # one per index; None: whole-network passes
        self.graph: BlockGraph | None = None  # the block's graph, where it traces and its runs check out
        self.runs: list[BlockRun | None] = []  # per index: a run of the block paused before a layer
        self.largest_cache = 0  # bytes: paused runs and the cache together stay within it
        # a slice of the first batch on which each block is checked, and its input of the current block
        self.probe = batches[self.indices[0]][:PROBE_IMAGES].clone() if self.indices else None
        self.probe_cache: torch.Tensor | None = None
        self.probe_run: BlockRun | None = None
        self.fallbacks = 0  # blocks whose check failed

    def inputs(self, name: str):
        """Yield (batch index, input of module `name`) for every batch index where the module runs."""
        module = self.model.get_submodule(name)
        block = block_of(self.model, name) if self.use_cache and self.indices else None
        if block != self.block:
            self._enter(block, module)
        if self.graph is not None and self.cache is not None and self._runs_agree(module):
            yield from self._resumed_inputs(module)
            return
        root = self.model if self.cache is None else self.model.get_submodule(self.block)
        sources = [self.batches[i] for i in self.indices] if self.cache is None else self.cache
        for index, x in zip(self.indices, sources):
            version = x._version
            try:
                captured = input_of(root, module, x)
            except _Unreached:  # a module the forward pass skips: no input from this batch
                continue
            if self.cache is not None and x._version != version:
                self.fallbacks += 1  # the block changed its input in place: the cache is spent
                self.block, self.cache = None, None
            yield index, captured

    def _runs_agree(self, module: nn.Module) -> bool:
        """Whether the block's runs give `module` the input a hook on it sees, on the probe: the probe's own
        run (kept across the block's layers, like the others) against the block run up to a hook."""
        stop = self.graph.first_call(module)
        if stop is None:
            return False
        if self.probe_run is None or self.probe_run.next > stop:
            self.probe_run = BlockRun(self.graph, self.probe_cache)
        self.probe_run.run_to(stop)
        block_module = self.model.get_submodule(self.block)
        if self.probe_run.finished or not torch.equal(self.probe_run.argument(),
                                                      input_of(block_module, module, self.probe_cache)):
            self.graph, self.runs, self.probe_run = None, [None] * len(self.cache), None  # hooks from here on
            return False
        return True

    def _resumed_inputs(self, module: nn.Module):
        """`inputs` by the block's paused runs (block_runs.py): each goes on from where it stopped, or
        starts again from the cache where it has passed the layer or was not kept. Runs stay paused while
        they and the cache hold no more bytes than the largest cache this stream has held."""
        graph, cache, stop = self.graph, self.cache, self.graph.first_call(module)
        budget = self.largest_cache - _nbytes(cache)  # paused runs never take the stream above its largest cache
        held = sum(run.nbytes() for run in self.runs if run is not None)  # the runs paused now
        spent = False
        for position, (index, x) in enumerate(zip(self.indices, cache)):
            run, self.runs[position] = self.runs[position], None
            held -= run.nbytes() if run is not None else 0
            if run is None or run.next > stop:
                run = BlockRun(graph, x)
            version = x._version
            run.run_to(stop)
            if run.finished:  # the block did not call the layer on this batch
                continue
            if x._version != version:  # the block changed its input in place: the cache is spent
                self.fallbacks += 1 if not spent else 0
                spent, self.block, self.cache, self.graph = True, None, None, None
            if not spent and held + (size := run.nbytes()) <= budget:
                held += size
                self.runs[position] = run
            yield index, run.argument()

    # ------------------------------------------------------------------ moving the cache
    def _enter(self, block: str | None, module: nn.Module) -> None:
        """Make `cache` hold the inputs of `block` (checked on the probe), or None."""
        previous, cache, runs = self.block, self.cache, self.runs if self.graph is not None else []
        self.block, self.cache, self.graph, self.runs, self.probe_run = block, None, None, [], None
        if block is None:
            return
        block_module = self.model.get_submodule(block)
        try:
            expected, call = input_of(self.model, module, self.probe, watch=block_module)
        except _Unreached:
            return
        if call is None or len(call[0]) != 1 or call[1] or not torch.is_tensor(call[0][0]):
            self.fallbacks += 1  # not called with one tensor: the cache cannot stand in for the call
            return
        block_input = call[0][0].detach()  # the probe's
        path = self._path(previous, block) if cache is not None else None
        if path is not None and not torch.equal(self._advance(path, self.probe_cache), block_input):
            path = None
        trial = block_input.clone()
        version = trial._version
        if not torch.equal(input_of(block_module, module, trial), expected) or trial._version != version:
            self.fallbacks += 1  # the block does not reproduce the layer's input, or changes its own input
            return
        if path is None:  # one pass of the network up to the block, for every batch
            try:
                cache = [input_of(self.model, block_module, self.batches[index]) for index in self.indices]
            except _Unreached:  # the block runs for some batches only
                self.fallbacks += 1
                return
        else:
            for i in range(len(cache)):
                cache[i] = self._advance_from(path, cache, runs, i)  # in place: one extra batch in memory
        self.cache, self.probe_cache = cache, block_input
        self.largest_cache = max(self.largest_cache, _nbytes(cache))
        self.graph, self.runs = _traced(block_module), [None] * len(cache)

    def _path(self, previous: str | None, block: str) -> list[nn.Module] | None:
        """The modules that turn `previous`'s input into `block`'s: `previous` and the siblings between."""
        if previous is None:
            return None
        parent_a, _, a = previous.rpartition(".")
        parent_b, _, b = block.rpartition(".")
        container = self.model.get_submodule(parent_a)
        if parent_a != parent_b or not isinstance(container, nn.Sequential):
            return [self.model.get_submodule(previous)]  # e.g. layer1's last block -> layer2's first
        names = list(container._modules)
        start, stop = names.index(a), names.index(b)
        if stop <= start:
            return None
        return [container._modules[n] for n in names[start:stop]]

    def _advance_from(self, path: list[nn.Module], cache: list[torch.Tensor], runs: list, i: int) -> torch.Tensor:
        """Entry i of the cache moved along `path`; a paused run of the block `path` starts with goes on."""
        run = runs[i] if i < len(runs) else None
        if run is not None and run.graph.block is path[0]:
            return self._advance(path[1:], run.finish())
        return self._advance(path, cache[i])

    @staticmethod
    def _advance(path: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for module in path:
                x = module(x)
        return x


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(x.untyped_storage().nbytes() for x in tensors)


def _traced(block: nn.Module) -> BlockGraph | None:
    """The block's graph, or None where torch.fx cannot trace it (control flow on tensors, several inputs:
    tracing runs the user's code, which may raise anything); such a block is read by hooks."""
    try:
        return BlockGraph(block)
    except Exception:  # noqa: BLE001
        return None


def block_of(model: nn.Module, name: str) -> str | None:
    """The outermost of `name` and its ancestors whose parent is an nn.Sequential / nn.ModuleList.

    ResNet: "layer1.0.downsample.0" -> "layer1.0" (the bottleneck, not the downsample's Sequential);
    VGG: "features.3" -> itself."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        parent = model.get_submodule(".".join(parts[:depth - 1]))
        if isinstance(parent, _CONTAINERS):
            return ".".join(parts[:depth])
    return None
