"""Bit engines (`bits-avx512`, `bits-avx2`, `bits-portable`): binary-input layers on the native kernels.

`prepare` traces the loaded model with torch.fx (compressed layers as leaves), swaps every
CompressedConv2d/CompressedLinear with binary or ternary weights and XNOR-Net binary inputs for a
`deepshrink.kernels.layers.BitConv2d`, and folds what follows each one into its epilogue while the
chain has a single consumer: an eval-mode BatchNorm, a residual add whose other operand is already
computed, a ReLU, and finally the next binary layer's sign, so that consecutive binary layers hand
over packed bits. Everything else (the float first conv, the classifier, float shortcuts) runs as in
PyTorch. A ResNet basic block then costs two native calls (conv1: pack its float input, emit the
bits conv2 reads; conv2: BN + residual + ReLU) instead of a dozen tensor ops.

`prepare` then hands that graph to `bits_plan.compile_plan`: where every op is one the native plan
knows (a ResNet's stem, blocks, shortcuts, pool and classifier), the whole network runs as one native
call per batch and the graph is dropped; otherwise the graph runs as above.

Models whose binary layers read float inputs (BWN, TWN, TTQ, DoReFa W1) are not this engine's: their
arithmetic is float x +-alpha, which the integer engine runs.

Example::

    engine = get_engine("bits-avx2")
    runner = engine.prepare(deepshrink.load("xnor.dsz"), torch.randn(1, 3, 32, 32), threads=1)
    logits = runner(x)
"""
from __future__ import annotations

import operator
from contextlib import contextmanager

import torch
import torch.fx
from torch import nn

from .. import kernels
from ..kernels.layers import BitConv2d, binary_input_reason, weight_reason
from ..nn import CompressedConv2d, CompressedLinear, set_module
from ..packing.graph_vocab import WRAPPED
from .bits_plan import PlanRunner, compile_plan
from .engines import Engine, Runner, register_engine

_RELUS = (torch.relu, torch.nn.functional.relu)
_ADDS = (operator.add, torch.add)


class _CompressedLeafTracer(torch.fx.Tracer):
    """Keeps compressed layers whole (their input quantizers hold Python-side state), and deepshrink's own
    graph functions (SplitAttention's core) as one call, also where a loaded graph's code calls them."""

    def __init__(self):
        super().__init__(autowrap_functions=WRAPPED)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (CompressedConv2d, CompressedLinear)) or super().is_leaf_module(module, qualified_name)


def bit_layers(model: nn.Module) -> list[str]:
    """Names of the layers the bit engines run natively: bit weights and binary (+-1) inputs."""
    return [name for name, m in model.named_modules() if isinstance(m, (CompressedConv2d, CompressedLinear))
            and weight_reason(m) is None and binary_input_reason(m) is None]


def bits_unsupported_reason(model: nn.Module) -> str | None:
    """None when the bit engines can run `model`; else one line naming why not."""
    compressed = [m for m in model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    bit_weights = [m for m in compressed if weight_reason(m) is None]
    if not bit_weights:
        return "no layer has binary or ternary weights"
    if not bit_layers(model):
        return ("no layer has binary inputs (its binary/ternary weights meet float inputs: the integer engine's "
                f"work); first: {binary_input_reason(bit_weights[0])}")
    try:
        _CompressedLeafTracer().trace(model)
    except Exception as exc:  # data-dependent control flow or an op fx cannot trace
        return f"torch.fx cannot trace the model ({str(exc).splitlines()[0][:120]})"
    return None


def _single_call(graph: torch.fx.Graph) -> set[str]:
    """Module targets called exactly once (only those may be folded away)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return {target for target, n in calls.items() if n == 1}


def _fold_next(gm: torch.fx.GraphModule, node: torch.fx.Node, order: dict, once: set[str]) -> bool:
    """Fold the single consumer of `node` (a BitConv2d call) into its epilogue; False when none folds."""
    layer: BitConv2d = gm.get_submodule(node.target)
    if len(node.users) != 1:
        return False
    user = next(iter(node.users))
    module = gm.get_submodule(user.target) if user.op == "call_module" else None
    if isinstance(module, BitConv2d):
        if user.args == (node,) and not user.kwargs and module.scaling_map is None and not module.packed_input \
                and layer.scaling_map is None and layer.out_float:
            layer.emit_packed_for(module)
        return False  # packed output ends the epilogue either way
    if not layer.can_fuse():
        return False
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and user.target in once and user.args == (node,):
        scale = torch.rsqrt(module.running_var.float() + module.eps)
        scale = scale * module.weight.detach().float() if module.weight is not None else scale
        shift = -module.running_mean.float() * scale
        shift = shift + module.bias.detach().float() if module.bias is not None else shift
        layer.fold_affine(scale, shift)
    elif (isinstance(module, nn.ReLU) and user.target in once) or (user.op == "call_function" and user.target in _RELUS) \
            or (user.op == "call_method" and user.target in ("relu", "relu_")):
        if len(user.args) != 1 or user.kwargs:
            return False
        layer.fuse_relu()
    elif user.op == "call_function" and user.target in _ADDS and len(user.args) == 2 and not user.kwargs \
            and len(node.args) == 1:
        other = user.args[1] if user.args[0] is node else user.args[0]
        if not isinstance(other, torch.fx.Node) or other is node or order[other] >= order[node]:
            return False
        node.args = (node.args[0], other)  # BitConv2d.forward(x, residual)
    else:
        return False
    user.replace_all_uses_with(node)
    gm.graph.erase_node(user)
    return True


def to_bits(model: nn.Module, path: str) -> torch.fx.GraphModule:
    """A GraphModule running `model`'s binary-input layers on the native kernels of `path` (see module doc)."""
    graph = _CompressedLeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph).eval()
    native = set(bit_layers(model))
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in native]
    for node in calls:
        set_module(gm, node.target, BitConv2d.from_compressed(gm.get_submodule(node.target), path))
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    once = _single_call(gm.graph)
    for node in calls:
        while _fold_next(gm, node, order, once):
            pass
    if any(isinstance(m, nn.Conv2d) or isinstance(m, BitConv2d) and not m.linear for m in gm.modules()):
        _channels_last_input(gm.graph)  # images; a model of linear layers may take tokens (B, T, C)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _channels_last_input(graph: torch.fx.Graph) -> None:
    """Convert the image to channels-last once at the start: the native layers read and write that
    layout, so float layers before and between them (stem, shortcut projections) then keep it too,
    instead of each hand-over copying between layouts."""
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.users:
            with graph.inserting_after(node):
                converted = graph.call_method("contiguous", (node,), {"memory_format": torch.channels_last})
            node.replace_all_uses_with(converted, delete_user_cb=lambda user: user is not converted)
            break


@contextmanager
def _threads(count: int):
    """PyTorch's intra-op thread count (which at::parallel_for uses) set for a block, then restored."""
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if before != count:
            torch.set_num_threads(before)


class BitsRunner(Runner):
    """A model prepared by `to_bits`, run as one native plan where `compile_plan` takes it (`plan`), else as
    the fx graph (`module`); calling it returns float logits."""

    def __init__(self, module: torch.fx.GraphModule | None, threads: int, plan: PlanRunner | None = None):
        self.module, self.threads, self.plan = module, int(threads), plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _threads(self.threads):
            return self.plan(x) if self.plan is not None else self.module(x)

    def resident_bytes(self) -> int:
        if self.plan is not None:
            return self.plan.resident_bytes()
        tensors = {id(t): t for t in list(self.module.parameters()) + list(self.module.buffers())}
        native = sum(m.resident_bytes() for m in self.module.modules() if isinstance(m, BitConv2d))
        return native + sum(t.numel() * t.element_size() for t in tensors.values())


class _BitsEngine(Engine):
    path = ""

    def unavailable_reason(self) -> str | None:
        reason = kernels.unavailable_reason()
        if reason is not None:
            return reason
        if self.path not in kernels.supported_paths():
            return f"this CPU cannot run the {self.path} bit-kernel path"
        return None

    def unsupported_reason(self, model: nn.Module) -> str | None:
        return bits_unsupported_reason(model)

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1, calibration=None) -> Runner:
        # binary layers need no calibration: their inputs are signs and their scales come from the file
        gm = to_bits(model.eval(), self.path)
        plan = compile_plan(gm, tuple(example.shape[1:]), self.path) if example.dim() == 4 else None
        # with a plan the graph (and the float copies it holds) is dropped: only the plan stays resident
        return BitsRunner(None, threads, plan) if plan is not None else BitsRunner(gm, threads)


@register_engine
class BitsAVX512Engine(_BitsEngine):
    """Binary layers on the AVX-512 VPOPCNTDQ kernels."""

    name, path = "bits-avx512", "avx512"


@register_engine
class BitsAVX2Engine(_BitsEngine):
    """Binary layers on the AVX2 (vpshufb popcount) kernels."""

    name, path = "bits-avx2", "avx2"


@register_engine
class BitsPortableEngine(_BitsEngine):
    """Binary layers on the portable (compiler popcount) kernels."""

    name, path = "bits-portable", "portable"
