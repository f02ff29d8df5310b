"""The inputs of one module after another, in execution order, without re-running the network from its input.

A layer-wise method visits L layers and needs each one's inputs over the calibration batches. Running
the network from its first layer up to every layer costs about L/2 forward passes: for ResNet-50
(54 layers, 1,024 images at 224x224) ~220 TFLOP, hours on a 2-core CPU. `LayerInputs` caches the
inputs of the current *block* instead, the outermost of the layer and its ancestors whose parent is
an `nn.Sequential` or `nn.ModuleList` (a ResNet bottleneck, a transformer block, a VGG layer), and runs
only that block, stopped at the layer. When the next layer lies in a later block, the cache moves on
by running the finished block (and the siblings between, in the same container) on it, batch by batch
in place. That is about 3 forward passes for ResNet-50 instead of 27.

Nothing is assumed about the model's `forward`. Each time a block is entered the first batch is checked
against a forward pass of the whole network: the block must be called with one tensor and nothing else,
the advanced cache must equal the block's input there, and the block run from it must give the
layer the same input, bit for bit. Where a check fails, that block's batches come from whole-network
passes, as without a cache (correct, only slower; `fallbacks` counts them).

Contract: between `inputs` calls the caller may change only the modules of the current block and those
after it (the layer just solved, layers not solved yet); the layer-wise methods do.

Memory: the cache holds one block input per calibration batch (ResNet-50 at 224x224: at most
256 x 56 x 56 floats = 3.2 MB per image, 3.3 GB for 1,024 images), plus one batch being advanced.
`LayerwiseConfig.cache_inputs=False` turns it off.

Example::

    stream = LayerInputs(model, batches, indices=range(len(batches)))
    for index, x in stream.inputs("layer2.0.conv1"):
        ...   # x: the input of model.layer2[0].conv1 on batches[index]
"""
from __future__ import annotations

import torch
from torch import nn

from .capture import StopForward

_CONTAINERS = (nn.Sequential, nn.ModuleList)


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
        self.fallbacks = 0  # blocks whose check failed

    def inputs(self, name: str):
        """Yield (batch index, input of module `name`) for every batch index where the module runs."""
        module = self.model.get_submodule(name)
        block = block_of(self.model, name) if self.use_cache and self.indices else None
        if block != self.block:
            self._enter(block, module)
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

    # ------------------------------------------------------------------ moving the cache
    def _enter(self, block: str | None, module: nn.Module) -> None:
        """Make `cache` hold the inputs of `block` (checked on the first batch), or None."""
        previous, cache = self.block, self.cache
        self.block, self.cache = block, None
        if block is None:
            return
        first = self.indices[0]
        block_module = self.model.get_submodule(block)
        try:
            expected, call = input_of(self.model, module, self.batches[first], watch=block_module)
        except _Unreached:
            return
        if call is None or len(call[0]) != 1 or call[1] or not torch.is_tensor(call[0][0]):
            self.fallbacks += 1  # not called with one tensor: the cache cannot stand in for the call
            return
        block_input = call[0][0].detach()
        path = self._path(previous, block) if cache is not None else None
        if path is not None:
            moved = self._advance(path, cache[0])
            if not torch.equal(moved, block_input):
                path = None
        trial = block_input.clone()
        version = trial._version
        if not torch.equal(input_of(block_module, module, trial), expected) or trial._version != version:
            self.fallbacks += 1  # the block does not reproduce the layer's input, or changes its own input
            return
        if path is None:  # one pass of the network up to the block, for every batch
            try:
                cache = [block_input] + [input_of(self.model, block_module, self.batches[index])
                                         for index in self.indices[1:]]
            except _Unreached:  # the block runs for some batches only
                self.fallbacks += 1
                return
        else:
            cache[0] = moved
            for i in range(1, len(cache)):
                cache[i] = self._advance(path, cache[i])  # in place: one extra batch in memory
        self.cache = cache

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

    @staticmethod
    def _advance(path: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for module in path:
                x = module(x)
        return x


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
