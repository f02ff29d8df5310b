"""The architecture of a model outside the zoo, as a traced graph in a JSON vocabulary of our own.

`deepshrink.pack` traces the model it packs with torch.fx, registered packable modules (the compressed
layers) and a list of plain torch.nn layers being leaves, and records the graph as JSON: nodes
(placeholder, get_attr, call_module, call_function, call_method, output) whose arguments are node
references and literals, each leaf module's type and constructor arguments, each other tensor's shape.
`deepshrink.load` rebuilds a `torch.fx.GraphModule` from that record in a process that never saw the
model's code. Nothing from the file is imported, unpickled or evaluated: functions, methods and module
types are looked up in the allow-lists below by name, and anything else is refused with its name.
Names that reach the code FX generates (targets, keyword names) must be plain identifiers; literal
arguments reach it only through `repr`.

Example::

    traced = trace(model)                  # UserError naming the construct if forward cannot be traced
    record = record_graph(traced)          # JSON-serialisable
    model = build_graph_module(record)     # leaves of packable modules are `Pending` until filled in
"""
from __future__ import annotations

import builtins
import keyword
import linecache
import math
import re
import sys
import traceback
from pathlib import Path

import torch
from torch import fx, nn

from ..errors import PackFormatError, UserError
from ..nn.packable import Packable
from .graph_vocab import _FUNCTION_NAMES, _LEAF_TYPES, DTYPES, FUNCTIONS, GETATTR_NAMES, METHODS, MODULES, WRAPPED
from .payload import _fail

_FIX = ("make forward traceable by torch.fx, or register a constructor with "
        "@deepshrink.registry.register_model and build the model with deepshrink.create_model(name, ...) "
        "(the file then records the name and opens wherever that registration is imported)")


_OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")
_NAME = re.compile(r"[A-Za-z0-9_]+")


class Pending(nn.Module):
    """Stands where a packable module goes until the format builds it from its `pack_config`."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a packable module of this graph was never rebuilt")


class _LeafTracer(fx.Tracer):
    """Packable modules and the plain torch.nn layers of `MODULES` are leaves; everything else is traced
    through (a subclass of a torch.nn layer too: its forward may differ from the one the file rebuilds).
    `childless_leaves`: every module without children is a leaf too (for callers that keep the modules
    themselves, such as deepshrink.runtime.frozen, rather than rebuilding them from the vocabulary)."""

    def __init__(self, childless_leaves: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.childless_leaves = childless_leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (isinstance(module, Packable) or type(module) in _LEAF_TYPES
                or self.childless_leaves and next(module.children(), None) is None)

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
            frame = frame.f_back
        if frame is not None:  # where the user's code made this node, for pack-time errors
            node.meta["deepshrink_where"] = _location(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        return node


_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).parents[1]))


def _location(filename: str, lineno: int, function: str) -> str:
    source = linecache.getline(filename, lineno).strip()
    return f"{Path(filename).name}:{lineno} in {function}" + (f": `{source}`" if source else "")


def _user_frame(exc: BaseException) -> str:
    """' at file:line in function: `source`' of the innermost frame outside torch and deepshrink."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_LIBRARY_DIRS)]
    return f" at {_location(frames[-1].filename, frames[-1].lineno, frames[-1].name)}" if frames else ""


def trace(model: nn.Module, build=None):
    """`model` as a GraphModule sharing its leaf modules and tensors (traced in eval mode); with `build`,
    `build(graph)` instead, called with the fx.Graph while the tensor constants FX parks on `model` (its
    get_attr targets) are still there, without generating the GraphModule's code, and with every
    module that has no children a leaf (`build` runs the modules it is given; nothing is rebuilt).

    Raises UserError naming the construct, and the fix, when torch.fx cannot trace `forward`
    (data-dependent control flow such as `if x.sum() > 0:`).
    """
    name = type(model).__name__
    # functions FX must record as one call wherever they are called (`torch.fx.wrap` covers only calls
    # from their own module, not from the code of a GraphModule that `load` rebuilt)
    tracer = _LeafTracer(childless_leaves=build is not None, autowrap_functions=WRAPPED)
    before, was_training = set(vars(model)), model.training
    model.eval()
    try:
        try:
            graph = tracer.trace(model)
            traced = None if build else fx.GraphModule(
                model, graph, class_name=name if _NAME.fullmatch(name) else "GraphModule")
        except Exception as exc:  # noqa: BLE001 - whatever tracing trips on, the user gets one message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot record the architecture of {name}: torch.fx cannot trace its forward"
                            f"{_user_frame(exc)} ({reason}); {_FIX}") from None
        return build(graph) if build else traced
    finally:
        model.train(was_training)
        for added in set(vars(model)) - before:  # tensor constants FX parks on the traced model
            delattr(model, added)


# ---------------------------------------------------------------- recording


def _where(node: fx.Node) -> str:
    return f" (at {node.meta['deepshrink_where']})" if "deepshrink_where" in node.meta else ""


def _refuse(node: fx.Node, what: str) -> None:
    owner = type(node.graph.owning_module).__name__
    raise UserError(f"cannot record the architecture of {owner}: its forward {what}{_where(node)}, which "
                    f"deepshrink cannot rebuild without the model's code; {_FIX}")


def _encode(arg, node: fx.Node):
    if isinstance(arg, fx.Node):
        return {"node": arg.name}
    if arg is None or isinstance(arg, (bool, int, str)):
        return arg
    if isinstance(arg, float):
        return arg if math.isfinite(arg) else {"float": str(arg)}
    if isinstance(arg, (tuple, list)):
        return {"tuple" if isinstance(arg, tuple) else "list": [_encode(a, node) for a in arg]}
    if isinstance(arg, slice):
        return {"slice": [_encode(arg.start, node), _encode(arg.stop, node), _encode(arg.step, node)]}
    if arg is Ellipsis:
        return {"ellipsis": None}
    if isinstance(arg, torch.dtype) and str(arg).removeprefix("torch.") in DTYPES:
        return {"dtype": str(arg).removeprefix("torch.")}
    if isinstance(arg, dict) and all(isinstance(k, str) for k in arg):
        return {"dict": {k: _encode(v, node) for k, v in arg.items()}}
    _refuse(node, f"passes {type(arg).__name__} {arg!r} to {node.target}")


def _module_spec(module: nn.Module) -> dict:
    cls, args = MODULES[type(module).__name__]
    config = {}
    for arg in args:
        value = (getattr(module, arg) is not None) if arg == "bias" else getattr(module, arg)
        config[arg] = list(value) if isinstance(value, tuple) else value
    return {"type": cls.__name__, "config": config}


def _tensor_spec(value) -> dict:
    return {"kind": "parameter" if isinstance(value, nn.Parameter) else "buffer", "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."), "requires_grad": bool(value.requires_grad)}


def record_graph(traced: fx.GraphModule) -> dict:
    """The JSON record of a `trace`d model: nodes, leaf modules (type and constructor arguments; packable
    ones only marked, the format records them), and every other tensor's kind, shape and dtype."""
    packable_paths = [name for name, m in traced.named_modules() if isinstance(m, Packable)]
    nodes, modules, tensors = [], {}, {}
    for node in traced.graph.nodes:
        target = node.target
        if node.op in ("call_module", "get_attr") and not all(
                _NAME.fullmatch(p) and not p.startswith("__") and not hasattr(fx.GraphModule, p)
                for p in target.split(".")):
            _refuse(node, f"uses an attribute path {target!r} that shadows a method of nn.Module")
        if node.op == "call_module":
            module = traced.get_submodule(target)
            modules[target] = {"type": "packable"} if isinstance(module, Packable) else _module_spec(module)
        elif node.op == "get_attr":
            if any(target.startswith(p + ".") for p in packable_paths):
                _refuse(node, f"reads {target} outside its module's forward")
            owner, _, attr = target.rpartition(".")
            value = getattr(traced.get_submodule(owner), attr)
            if not isinstance(value, torch.Tensor) or str(value.dtype).removeprefix("torch.") not in DTYPES:
                _refuse(node, f"reads {target} ({type(value).__name__})")
            if type(traced.get_submodule(owner)) in _LEAF_TYPES:  # a leaf's own tensors come with it
                modules.setdefault(owner, _module_spec(traced.get_submodule(owner)))
            else:
                tensors[target] = _tensor_spec(value)
        elif node.op == "call_function":
            target = _FUNCTION_NAMES.get(id(target))
            if target is None:
                _refuse(node, f"calls {fx.node._get_qualified_name(node.target)}")
            if target == "builtins.getattr" and node.args[1:2] and node.args[1] not in GETATTR_NAMES:
                _refuse(node, f"reads attribute {node.args[1]!r}")
        elif node.op == "call_method" and target not in METHODS:
            _refuse(node, f"calls method .{target}()")
        nodes.append({"op": node.op, "name": node.name, "target": target,
                      "args": _encode(tuple(node.args), node)["tuple"],
                      "kwargs": {k: _encode(v, node) for k, v in node.kwargs.items()}})
    record = {"class_name": type(traced).__name__, "nodes": nodes, "modules": modules, "tensors": tensors}
    _check_rebuilds(traced, record)
    return record


def _check_rebuilds(traced: fx.GraphModule, record: dict) -> None:
    """What `load` will build from `record` holds the traced model's tensors, shape for shape (else the
    file would pack but not load)."""
    try:
        with torch.device("meta"):
            rebuilt = build_graph_module(record).state_dict()
    except PackFormatError as exc:
        raise UserError(f"cannot record the architecture of {type(traced).__name__}: {exc}") from None
    for key, value in traced.state_dict().items():
        if key in rebuilt and rebuilt[key].shape != value.shape:
            raise UserError(f"cannot record the architecture of {type(traced).__name__}: {key} has shape "
                            f"{list(value.shape)}, but its module rebuilt from its constructor arguments has "
                            f"{list(rebuilt[key].shape)}")


# ---------------------------------------------------------------- rebuilding


def _check_path(path, what: str) -> str:
    """A dotted attribute path whose parts are plain names that shadow nothing of nn.Module or GraphModule."""
    parts = path.split(".") if isinstance(path, str) else [None]
    if not all(isinstance(p, str) and _NAME.fullmatch(p) and not p.startswith("__")
               and not hasattr(fx.GraphModule, p) for p in parts):
        _fail(what, f"{path!r} is not a plain attribute path")
    return path


def _decode(value, env: dict, what: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        _fail(what, f"argument {value!r} is not in deepshrink's graph vocabulary")
    (tag, inner), = value.items()
    if tag == "node" and inner in env:
        return env[inner]
    if tag in ("tuple", "list") and isinstance(inner, list):
        items = [_decode(v, env, what) for v in inner]
        return tuple(items) if tag == "tuple" else items
    if tag == "slice" and isinstance(inner, list) and len(inner) == 3:
        return slice(*(_decode(v, env, what) for v in inner))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "float" and inner in ("inf", "-inf", "nan"):
        return float(inner)
    if tag == "dtype" and inner in DTYPES:
        return DTYPES[inner]
    if tag == "dict" and isinstance(inner, dict):
        return {k: _decode(v, env, what) for k, v in inner.items()}
    _fail(what, f"argument {value!r} is not in deepshrink's graph vocabulary (an unknown tag, node or dtype)")


def _plain(value):
    """A JSON constructor argument: scalars and lists of them only (lists become tuples)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(v is None or isinstance(v, (bool, int, float)) for v in value):
        return tuple(value)
    raise ValueError(f"argument {value!r} is not a number, string or list of numbers")


def _build_leaf(spec, path: str) -> nn.Module:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        _fail(f"module {path!r}", f"bad module record {spec!r}")
    if spec["type"] == "packable":
        return Pending()
    if spec["type"] not in MODULES:
        _fail(f"module {path!r}", f"type {spec['type']!r} is not one deepshrink rebuilds "
                                  f"(allowed: {', '.join(sorted(MODULES))} and registered packable modules)")
    cls, args = MODULES[spec["type"]]
    config = spec.get("config")
    if not isinstance(config, dict) or set(config) != set(args):
        _fail(f"module {path!r}", f"{spec['type']} takes the arguments {list(args)}, the file gives {config!r}")
    try:
        return cls(**{key: _plain(value) for key, value in config.items()})
    except Exception as exc:  # noqa: BLE001
        _fail(f"module {path!r}", f"cannot build {spec['type']}: {exc}")


def _install(root: nn.Module, path: str, value) -> None:
    """Put a module or tensor at dotted `path` under `root`, creating plain containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        child = root._modules.get(part)
        if child is None:
            child = nn.Module()
            root.add_module(part, child)
        elif isinstance(child, Pending) or type(child) in _LEAF_TYPES:
            _fail(path, "lies inside a rebuilt module")
        root = child
    if leaf in root._modules or leaf in root._parameters or leaf in root._buffers:
        _fail(path, "is recorded twice")
    if isinstance(value, nn.Module):
        root.add_module(leaf, value)
    elif isinstance(value, nn.Parameter):
        root.register_parameter(leaf, value)
    else:
        root.register_buffer(leaf, value)


def _build_tensor(spec, path: str) -> torch.Tensor:
    if (not isinstance(spec, dict) or spec.get("kind") not in ("parameter", "buffer") or spec.get("dtype") not in DTYPES
            or not isinstance(spec.get("shape"), list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in spec["shape"])):
        _fail(f"tensor {path!r}", f"bad tensor record {spec!r}")
    value = torch.empty(spec["shape"], dtype=DTYPES[spec["dtype"]])  # filled from the payload by the format
    if spec["kind"] == "parameter":
        return nn.Parameter(value, requires_grad=bool(spec.get("requires_grad")) and value.is_floating_point())
    return value


def _target(record: dict, root: nn.Module, modules: dict, tensors: dict, where: str):
    """The checked target of a node: a path, a method name, or an allow-listed function."""
    op, target = record["op"], record.get("target")
    if op == "call_function":
        if target not in FUNCTIONS:
            _fail(where, f"function {target!r} is not one deepshrink runs (the file may be hostile)")
        return FUNCTIONS[target]
    if op == "call_method":
        if target not in METHODS:
            _fail(where, f"method {target!r} is not one deepshrink runs (the file may be hostile)")
        return target
    if op == "placeholder":
        if not isinstance(target, str) or not target.isidentifier() or keyword.iskeyword(target):
            _fail(where, f"input name {target!r} is not an identifier")
        return target
    if op == "call_module" and target not in modules:
        _fail(where, f"calls module {target!r}, which the graph does not record")
    if op in ("call_module", "get_attr"):
        _check_path(target, where)
    if op == "get_attr" and target not in tensors:  # else a parameter or buffer of a rebuilt leaf module
        owner, _, attr = target.rpartition(".")
        owner = root.get_submodule(owner) if owner in modules else None
        if owner is None or (attr not in owner._parameters and attr not in owner._buffers):
            _fail(where, f"reads {target!r}, which the graph does not record as a tensor")
    return target


def build_graph_module(record) -> fx.GraphModule:
    """A GraphModule from a `record_graph` record, its tensors empty (the format fills them) and each
    packable module a `Pending` placeholder. Raises PackFormatError on anything outside the vocabulary."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in
                                               (("nodes", list), ("modules", dict), ("tensors", dict))):
        _fail("architecture graph", "expected {'nodes': list, 'modules': dict, 'tensors': dict}")
    root = nn.Module()
    for path, spec in record["modules"].items():
        _install(root, _check_path(path, "module"), _build_leaf(spec, path))
    for path, spec in record["tensors"].items():
        _install(root, _check_path(path, "tensor"), _build_tensor(spec, path))
    graph, env = fx.Graph(), {}
    for index, node in enumerate(record["nodes"]):
        where = f"graph node {index}"
        if not isinstance(node, dict) or node.get("op") not in _OPS or not isinstance(node.get("name"), str):
            _fail(where, f"bad node record {node!r}")
        where += f" ({node['name']})"
        target = _target(node, root, record["modules"], record["tensors"], where)
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(
                isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in kwargs):
            _fail(where, "args must be a list and kwargs an object keyed by identifiers")
        args = tuple(_decode(a, env, where) for a in args)
        kwargs = {k: _decode(v, env, where) for k, v in kwargs.items()}
        if node["op"] == "call_function" and target is builtins.getattr and (
                len(args) != 2 or args[1] not in GETATTR_NAMES):
            _fail(where, f"getattr of {args[1:]!r} is not one deepshrink runs (the file may be hostile)")
        if node["op"] == "output":
            if len(args) != 1:
                _fail(where, "output takes one argument")
            graph.output(args[0])
            break
        env[node["name"]] = graph.create_node(node["op"], target, args, kwargs)
    else:
        _fail("architecture graph", "has no output node")
    try:
        graph.lint()
        name = record.get("class_name")
        return fx.GraphModule(root, graph, class_name=name if isinstance(name, str) and _NAME.fullmatch(name)
                              and name.isidentifier() else "GraphModule")
    except Exception as exc:  # noqa: BLE001
        _fail("architecture graph", f"does not form a valid graph: {exc}")


def pending_modules(model: nn.Module) -> list[str]:
    """Paths of the packable modules a rebuilt graph still lacks (the file records no module for them)."""
    return [name for name, module in model.named_modules() if isinstance(module, Pending)]
