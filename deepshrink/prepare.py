"""The model every method receives: attention split into Linear projections, and every selected layer
proven to compute through its own forward.

A method compresses a layer by swapping the module (QAT: a quantized training layer; layer-wise and
pruning methods: a compressed layer) or by capturing the inputs its forward receives. Both assume the
network reaches the layer's weight only through the layer's forward. A module that reads a child's weight
itself (nn.MultiheadAttention reads `out_proj.weight` inside `F.multi_head_attention_forward`) breaks that
silently: QAT trains the weight unquantized, calibration sees no input. So `deepshrink.compress`:

1. replaces every nn.MultiheadAttention by `deepshrink.nn.SplitAttention` (same function, four Linear
   projections that run as modules);
2. runs one forward pass of two calibration samples while watching every tensor operation
   (a TorchFunctionMode): a selected layer whose weight reaches an operation outside the layer's own
   forward, or whose forward never runs, is refused with a UserError naming the layer and the module
   that reads it.

Example::

    model = split_attention(model)
    check_layers_run(model, ["block.attn.q_proj", "block.mlp"], images)   # UserError naming a culprit
"""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .errors import UserError
from .nn.attention import split_attention

__all__ = ["check_layers_run", "first_inputs", "split_attention"]


class _WeightReads(TorchFunctionMode):
    """Records, per watched weight, the module whose forward was running when an operation took it (or a
    view of it) as an argument, if that forward is not the layer's own (or one the layer's forward called)."""

    def __init__(self, addresses: dict[int, str]):
        super().__init__()
        self.addresses = addresses  # address of a weight's first element -> layer name
        self.running: list[str] = []  # names of the modules whose forward is running, outermost first
        self.readers: dict[str, str] = {}  # layer name -> the first module that read its weight outside it

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) != "__get__":  # x.shape, x.dtype read no values
            for value in pytree.tree_leaves((args, kwargs)):
                layer = self._owner(value)
                if layer is not None and layer not in self.running:
                    self.readers.setdefault(layer, self.running[-1] if self.running else "")
        return func(*args, **kwargs)

    def _owner(self, value) -> str | None:
        if not isinstance(value, torch.Tensor) or value.is_meta:
            return None
        address = value.data_ptr()  # a transposed or reshaped view of a weight starts where it does
        return self.addresses.get(address) if address else None


def first_inputs(*loaders, samples: int = 2):
    """The first `samples` inputs of the first batch of the first loader that is not None (None if none).

    torch's global random state, each loader's own generators and deepshrink loaders' pass count are as
    before afterwards: a DataLoader draws its seeds and its shuffle order from them, and the method's own
    pass over the data must not depend on this one (it did: the first training epoch saw another order)."""
    generators = [g for data in loaders for g in _generators(data)]
    states = [g.get_state() for g in generators]
    try:
        with torch.random.fork_rng(devices=[]):
            for data in loaders:
                if data is None:
                    continue
                # deepshrink's loaders count passes (each pass its own shuffle): peek without counting one
                peek = getattr(data, "first_batch", None)
                item = peek() if callable(peek) else next(iter(data), None)
                if item is None:
                    continue
                inputs = item[0] if isinstance(item, (tuple, list)) else item
                return inputs[:samples] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else inputs
        return None
    finally:
        for generator, state in zip(generators, states):
            generator.set_state(state)


def _generators(data) -> list[torch.Generator]:
    """The torch.Generators a DataLoader (its own, its sampler's, its batch sampler's sampler's) draws from."""
    found = []
    for holder in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def check_layers_run(model: nn.Module, names, inputs) -> None:
    """Refuse (UserError naming each) every layer in `names` that the forward pass of `inputs` does not
    compute through the layer's own forward: its weight read by another module, or the layer never run.

    Runs in eval mode without gradients; `inputs` move to the device of the model's parameters."""
    names = list(names)
    if inputs is None or not names:
        return
    layers = {name: model.get_submodule(name) for name in names}
    addresses = {layer.weight.data_ptr(): name for name, layer in layers.items()
                 if isinstance(getattr(layer, "weight", None), torch.Tensor) and not layer.weight.is_meta}
    readers, ran = _watched_forward(model, addresses, inputs)
    modules = dict(model.named_modules())
    problems = [_read_elsewhere(name, reader, modules) for name, reader in readers.items()]
    problems += [f"layer {name!r} never runs in a forward pass of the model" for name in names
                 if name not in ran and name not in readers]
    if problems:
        skip = ", ".join(f"{{pattern: '{name}', skip: true}}" for name in names if name not in ran or name in readers)
        raise UserError(f"{'; '.join(problems)}: no method can compress a weight that the network does not "
                        f"compute through its layer's forward (it would stay float, or train unquantized); "
                        f"call the layer as a module in forward, or leave it out with the recipe override "
                        f"`layers: [{skip}]`")


def _watched_forward(model: nn.Module, addresses: dict[int, str], inputs) -> tuple[dict[str, str], set[str]]:
    """One forward pass under `_WeightReads`: ({layer: module that read its weight outside it}, names of the
    modules whose forward ran)."""
    reads, ran = _WeightReads(addresses), set()

    def enter(name):
        def hook(module, args):  # returns None: the inputs go on unchanged
            reads.running.append(name)
            ran.add(name)
        return hook

    def leave(module, args, output):
        reads.running.pop()

    handles = []
    for module_name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(module_name)))
        handles.append(module.register_forward_hook(leave))
    device = next((p.device for p in model.parameters()), None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reads:
            model(inputs.to(device) if isinstance(inputs, torch.Tensor) and device is not None else inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return reads.readers, ran


def _read_elsewhere(layer: str, reader: str, modules: dict) -> str:
    who = f"{reader!r} ({type(modules[reader]).__name__})" if reader else "the model's forward"
    return f"{who} reads the weight of layer {layer!r} outside {layer!r}'s forward"
