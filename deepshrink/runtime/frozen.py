"""A loaded model frozen for inference: one byte buffer and a flat program, no tree of nn.Modules.

Why: a loaded ResNet-20 is a tree of 78 nn.Modules. Each costs ~2.4 KB of Python objects (a dozen
dicts of parameters, buffers and hooks) and each of its ~150 tensors a few hundred bytes of headers,
so the tree takes ~4.6x the memory of its 90 KB file (benchmarks/results/resident_memory_*.json)
however compact the codes are. A `FrozenModel` keeps only

- one uint8 buffer holding every tensor the model holds (codes at their packed width, scales, BatchNorm
  statistics), each at an 8-byte aligned offset;
- the model's torch.fx graph as a list of instructions, and for each leaf module its class, its plain
  attributes (shared between modules that have the same ones) and where its tensors lie in the buffer.

Between calls the program and the tensor table are held as one compressed byte string (pickled in this
process from the model it was given, zlib level 1): ~2.6 KB for a binary ResNet-20 against ~36 KB as Python
objects. Nothing else is ever unpickled here: the bytes are made by `FrozenModel.__init__` and cannot be
handed in. A model whose attributes cannot be pickled (a lambda, say) keeps its program as objects.

On each call the program is expanded (~0.2 ms for a ResNet-20) and every leaf module is rebuilt for the
duration of that call (its class's `__new__`, its attributes, tensors as views into the buffer, no
copy) and run by its class's own `forward`, so the frozen model computes exactly what the loaded one
does, with the same code: outputs are bit for bit equal. The price is that work on every call (see
`deepshrink speed`, engine `torch-frozen`). It is inference-only and on the CPU: no gradients, no `.train()`, no `state_dict`,
no `.to(device)`; a weight shared by two modules is stored twice.

Example::

    frozen = deepshrink.load("model.dsz", frozen=True)   # or FrozenModel(deepshrink.load("model.dsz"))
    logits = frozen(images)
    frozen.nbytes                                         # bytes of its tensor buffer
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import functools
import math
import pickle
import zlib
from array import array

import torch
from torch import fx, nn

from ..errors import UserError

_ALIGN = 8  # the widest element (int64, float64): every view into the buffer is aligned
_MODULE_STATE = ("_parameters", "_buffers", "_modules")
_EMPTY_HOOKS = {name: value for name, value in nn.Module().__dict__.items()
                if name not in _MODULE_STATE and name != "training"}  # shared, never written to
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int8, torch.int16,
           torch.int32, torch.int64, torch.bool)


class _Ref:
    """Tensor `index` of the model's tensor table, where a tensor sits among other values."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class _Object:
    """A dataclass instance (e.g. a layer's `ResidentWeight`): its class and its fields' values in order."""

    __slots__ = ("cls", "values")

    def __init__(self, cls, values: tuple):
        self.cls, self.values = cls, values


class _Container:
    """A dict (items as pairs), list or tuple that holds tensors."""

    __slots__ = ("kind", "items")

    def __init__(self, kind: type, items: tuple):
        self.kind, self.items = kind, items


class _Module:
    """A module: its class; its plain attributes (one dict shared by modules that have the same ones);
    its parameters and buffers as (name, present) pairs over consecutive tensors from `first`;
    attributes that hold tensors; children's names (shared) and specs."""

    __slots__ = ("cls", "plain", "parameters", "buffers", "first", "held", "child_names", "children")

    def __init__(self, cls, plain, parameters, buffers, first, held, child_names, children):
        self.cls, self.plain, self.parameters, self.buffers = cls, plain, parameters, buffers
        self.first, self.held, self.child_names, self.children = first, held, child_names, children


class _Slot:
    """The value of graph node `index` in an instruction's arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class _Freezer:
    """Walks a model once: appends its tensors to a byte list and a table (offset, dtype, shape), and
    shares equal plain values (attribute dicts, shapes, name tuples) between modules."""

    def __init__(self):
        self.chunks, self.size, self.shared = [], 0, {}
        self.offsets, self.dtypes, self.shapes = array("Q"), bytearray(), []

    def share(self, value, key=None):
        return self.shared.setdefault(repr(value) if key is None else key, value)

    def tensor(self, tensor: torch.Tensor) -> int:
        if tensor.dtype not in _DTYPES:
            raise UserError(f"cannot freeze a {tensor.dtype} tensor; run the loaded model as it is")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # (nbytes,)
        self.size += -self.size % _ALIGN
        self.offsets.append(self.size)
        self.dtypes.append(_DTYPES.index(tensor.dtype))
        self.shapes.append(self.share(tuple(tensor.shape)))
        self.chunks.append((self.size, data.clone()))
        self.size += data.numel()
        return len(self.offsets) - 1

    def value(self, value, where: str):
        if isinstance(value, torch.Tensor):
            return _Ref(self.tensor(value))
        if isinstance(value, nn.Module):
            return self.module(value, where)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            values = tuple(self.value(getattr(value, f.name), where) for f in dataclasses.fields(value))
            return _Object(type(value), values) if any(map(_frozen, values)) else value
        if isinstance(value, dict):
            items = tuple((key, self.value(item, where)) for key, item in value.items())
            return _Container(type(value), items) if any(_frozen(v) for _, v in items) else value
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            items = tuple(self.value(item, where) for item in value)
            return _Container(type(value), items) if any(map(_frozen, items)) else value
        return value

    def module(self, module: nn.Module, where: str) -> _Module:
        hooks = [name for name in _EMPTY_HOOKS if name.endswith("hooks") and getattr(module, name, None)]
        if hooks:
            raise UserError(f"cannot freeze {where or 'the model'}: it has {hooks[0].strip('_')} registered; "
                            "remove the hooks, or run the loaded model as it is")
        plain, held = {}, []
        for name, value in vars(module).items():
            if name in _MODULE_STATE or name in _EMPTY_HOOKS:
                continue
            frozen = self.value(value, f"{where}.{name}")
            if _frozen(frozen):
                held.append((name, frozen))
            else:
                plain[name] = value
        plain["training"] = False
        plain = self.share(plain, (type(module), repr(sorted(plain.items()))))  # modules alike share one dict
        first = len(self.offsets)
        # a None entry (a layer without bias) stays None: forward reads it
        parameters = self.share(tuple((n, p is not None) for n, p in module._parameters.items()))
        buffers = self.share(tuple((n, b is not None) for n, b in module._buffers.items()))
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                self.tensor(tensor)
        kept = [(n, c) for n, c in module._modules.items() if c is not None]
        children = tuple(self.module(c, f"{where}.{n}" if where else n) for n, c in kept)
        return _Module(type(module), plain, parameters, buffers, first, tuple(held) or (),
                       self.share(tuple(n for n, _ in kept)), children)

    def table(self) -> tuple[torch.Tensor, array, bytes, tuple]:
        buffer = torch.zeros(self.size, dtype=torch.uint8)
        for offset, data in self.chunks:
            buffer[offset:offset + data.numel()] = data
        return buffer, self.offsets, bytes(self.dtypes), tuple(self.shapes)


def _frozen(value) -> bool:
    return isinstance(value, (_Ref, _Object, _Container, _Module))


@functools.cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class _Thaw:
    """Rebuilds frozen values for one call; tensors are views into the model's buffer."""

    __slots__ = ("buffer", "offsets", "dtypes", "shapes")

    def __init__(self, buffer: torch.Tensor, offsets: array, dtypes: bytes, shapes: tuple):
        self.buffer, self.offsets, self.dtypes, self.shapes = buffer, offsets, dtypes, shapes

    def tensor(self, index: int) -> torch.Tensor:
        offset, dtype, shape = self.offsets[index], _DTYPES[self.dtypes[index]], self.shapes[index]
        nbytes = math.prod(shape) * dtype.itemsize
        return self.buffer[offset:offset + nbytes].view(dtype).view(shape)

    def value(self, value):
        if isinstance(value, _Ref):
            return self.tensor(value.index)
        if isinstance(value, _Module):
            return self.module(value)
        if isinstance(value, _Object):
            obj = value.cls.__new__(value.cls)
            for name, field in zip(_field_names(value.cls), value.values):
                object.__setattr__(obj, name, self.value(field))
            return obj
        if isinstance(value, _Container):
            if issubclass(value.kind, dict):
                return value.kind((key, self.value(item)) for key, item in value.items)
            return value.kind(self.value(item) for item in value.items)
        return value

    def module(self, spec: _Module) -> nn.Module:
        module = spec.cls.__new__(spec.cls)
        state = module.__dict__
        state.update(_EMPTY_HOOKS)
        state.update(spec.plain)
        index = spec.first
        for field, entries in (("_parameters", spec.parameters), ("_buffers", spec.buffers)):
            tensors = state[field] = {}
            for name, present in entries:
                tensors[name] = self.tensor(index) if present else None
                index += present
        state["_modules"] = {name: self.module(child) for name, child in zip(spec.child_names, spec.children)}
        for name, held in spec.held:
            state[name] = self.value(held)
        return module


class FrozenModel:
    """`model` (a loaded, eval-mode model) as a buffer and a flat program; see the module docstring.

    Raises UserError naming the construct when torch.fx cannot trace the model, or a module has hooks.
    """

    __slots__ = ("buffer", "_code", "__weakref__")

    def __init__(self, model: nn.Module):
        from ..packing.graph import trace

        code = trace(model, lambda graph: self._compile(model, graph))
        try:
            self._code = zlib.compress(pickle.dumps(code, protocol=pickle.HIGHEST_PROTOCOL), 1)
        except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a lambda among a module's attributes
            self._code = code

    def program(self) -> tuple:
        """(instructions, output, tensor offsets, dtypes, shapes), expanded from the bytes it is held as."""
        code = self._code
        return pickle.loads(zlib.decompress(code)) if isinstance(code, bytes) else code  # our own bytes only

    def _compile(self, root: nn.Module, graph: fx.Graph):
        freezer, modules, slots, program, output = _Freezer(), {}, {}, [], None
        freed = {}  # node -> the nodes whose values can go once it has run (it reads them last)
        last_use = {used: node for node in graph.nodes for used in node.all_input_nodes}
        for used, last in last_use.items():
            freed.setdefault(last, []).append(used)
        for index, node in enumerate(graph.nodes):
            slots[node] = _Slot(index)
            if node.op == "output":
                output = _args(node.args[0], slots)
                continue
            target = node.target
            if node.op == "call_module":
                if target not in modules:
                    modules[target] = freezer.module(root.get_submodule(target), target)
                target = modules[target]
            elif node.op == "get_attr":
                target = freezer.value(_get_attr(root, target), target)
            done = tuple(slots[n].index for n in freed.get(node, ())) or ()
            # (op, target, kwargs, slots freed after it, *args): one tuple an instruction
            program.append((node.op, target, _args(node.kwargs, slots) or None, done, *_args(node.args, slots)))
        self.buffer, offsets, dtypes, shapes = freezer.table()
        return tuple(program), output, offsets, dtypes, shapes

    def compacted(self) -> "FrozenModel":
        """A copy allocated afresh, after the caller dropped the model it was frozen from.

        Why: freezing runs while the loaded module tree and the load's scratch fill the heap, so the
        frozen model's small objects land scattered among them; once those are freed, the holes keep
        whole heap pages resident. Copied after that, the objects sit together (RSS per loaded
        ResNet-20: ~2.3x its file before, ~1.45x after, before the program was held as bytes)."""
        from ..packing.format import release_scratch

        gc.collect()
        release_scratch()
        return copy.deepcopy(self)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor buffer (codes, scales, every other tensor the model holds)."""
        return self.buffer.numel()

    def __call__(self, *inputs):
        program, output, *table = self.program()
        thaw, values, modules = _Thaw(self.buffer, *table), {}, {}
        placeholders = iter(inputs)
        with torch.inference_mode():
            for index, (op, target, kwargs, done, *args) in enumerate(program):
                if op == "placeholder":
                    values[index] = next(placeholders)
                    continue
                if op == "get_attr":
                    values[index] = thaw.value(target)
                    continue
                args, kwargs = _resolve(args, values), _resolve(kwargs, values) if kwargs else {}
                if op == "call_module":
                    module = modules.get(id(target))
                    if module is None:
                        module = modules[id(target)] = thaw.module(target)
                    values[index] = module.forward(*args, **kwargs)
                elif op == "call_function":
                    values[index] = target(*args, **kwargs)
                else:  # call_method
                    values[index] = getattr(args[0], target)(*args[1:], **kwargs)
                for slot in done:  # free activations as soon as nothing reads them
                    values.pop(slot, None)
            return _resolve(output, values)

    def __repr__(self) -> str:
        return f"FrozenModel({len(self.program()[0])} instructions, {self.nbytes:,} bytes of tensors)"


def _get_attr(root: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)


def _args(value, slots: dict):
    """fx arguments with every node replaced by its slot."""
    if isinstance(value, fx.Node):
        return slots[value]
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # fx's immutable ones as plain
        return (tuple if isinstance(value, tuple) else list)(_args(v, slots) for v in value)
    if isinstance(value, dict):
        return {k: _args(v, slots) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_args(value.start, slots), _args(value.stop, slots), _args(value.step, slots))
    return value


def _resolve(value, values: dict):
    if isinstance(value, _Slot):
        return values[value.index]
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_resolve(v, values) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_resolve(value.start, values), _resolve(value.stop, values), _resolve(value.step, values))
    return value

