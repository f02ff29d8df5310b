"""Runs of one block that pause before a layer and go on after it is solved, instead of starting again.

`LayerInputs` (stream.py) caches each calibration batch's input of the current block and, for each layer
of the block, runs the block from that input up to the layer. In a ResNet bottleneck conv3's inputs then
cost conv1 and conv2 again: for ResNet-50 the layers' inputs cost ~3.7 forward passes of the calibration
set and the BatchNorm correction as many again (conv multiply-adds counted by hooks). A `BlockRun` steps
through the block's graph (torch.fx, traced once per block on a copy, so tracing cannot change the block)
node by node and stops before the node that calls the layer. Once the method has solved the layer, the run
goes on from there, through the new layer, to the next one: each batch runs the block about once.

What is computed does not change: a run calls the block's own modules, looked up by name when the node
runs (a module a method swaps in is the one called), and the same functions on the same values, in the
block's order. `LayerInputs` checks, for every layer, on the first batch, that the run gives the layer the
input a hook on the module sees, bit for bit, and reads the block as before where it differs or the block
cannot be traced.

Memory: a paused run holds what the rest of the block still reads (a bottleneck's shortcut, the current
activation); `nbytes` counts it, so `LayerInputs` can keep paused only as many runs as its budget allows.

Example::

    graph = BlockGraph(model.layer1[0])
    run = BlockRun(graph, x)
    run.run_to(graph.first_call(model.layer1[0].conv2))
    inputs = run.argument()            # conv2's input
    output = run.finish()              # model.layer1[0](x), with whatever conv2 is now
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import fx, nn


class BlockGraph:
    """The traced graph of `block`, called with one tensor; raises if the block cannot be traced so."""

    def __init__(self, block: nn.Module):
        self.block = block
        graph = fx.symbolic_trace(copy.deepcopy(block)).graph  # a copy: tracing runs forward on proxies
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if not placeholders or any(not n.args for n in placeholders[1:]):
            raise ValueError("the block takes more than one argument without a default")
        self.input_node = placeholders[0]
        self.frees: dict[int, list[fx.Node]] = {}  # node index -> values last read by that node
        seen: set[fx.Node] = set()
        for index in reversed(range(len(self.nodes))):
            for used in self.nodes[index].all_input_nodes:
                if used not in seen:
                    seen.add(used)
                    self.frees.setdefault(index, []).append(used)

    def first_call(self, module: nn.Module) -> int | None:
        """Index of the first node that calls `module` (the block's module now), or None."""
        for index, node in enumerate(self.nodes):
            if node.op == "call_module" and self.block.get_submodule(node.target) is module:
                return index
        return None


class BlockRun:
    """One batch's run of a `BlockGraph`: the values still to be read, and the next node to execute."""

    def __init__(self, graph: BlockGraph, x: torch.Tensor):
        self.graph, self.input = graph, x
        self.next = 0  # index of the next node to execute
        self.env: dict[fx.Node, object] = {}
        self.output = None

    @property
    def finished(self) -> bool:
        return self.next >= len(self.graph.nodes)

    def run_to(self, stop: int | None) -> None:
        """Execute the nodes before index `stop` (None: to the end)."""
        stop = len(self.graph.nodes) if stop is None else stop
        with torch.no_grad():
            while self.next < stop:
                node = self.graph.nodes[self.next]
                value = self._execute(node)
                if node.op == "output":
                    self.output = value
                else:
                    self.env[node] = value
                for used in self.graph.frees.get(self.next, ()):
                    self.env.pop(used, None)
                self.next += 1

    def argument(self) -> torch.Tensor:
        """The first argument of the next node (the layer's input, when the run stopped before it)."""
        return fx.node.map_arg(self.graph.nodes[self.next].args[0], self.env.__getitem__).detach()

    def finish(self):
        """The block's output: the rest of the nodes executed."""
        self.run_to(None)
        return self.output

    def nbytes(self) -> int:
        """Bytes of the values the run holds, without the block input (the cache's own tensor)."""
        storages = {}
        for value in self.env.values():
            for tensor in _tensors(value):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        storages.pop(self.input.untyped_storage().data_ptr(), None)
        return sum(storages.values())

    def _execute(self, node: fx.Node):
        block = self.graph.block
        if node.op == "placeholder":
            return self.input if node is self.graph.input_node else node.args[0]  # later ones: their defaults
        args = fx.node.map_arg(node.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, self.env.__getitem__)
        if node.op == "get_attr":
            return functools.reduce(getattr, node.target.split("."), block)
        if node.op == "call_module":
            return block.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return args[0]  # output


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
