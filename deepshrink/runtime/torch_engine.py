"""PyTorch eager engines: `torch-fp32`, the same network uncompressed (the float reference),
`torch-eager`, the loaded compressed model as `deepshrink.load` returns it, and `torch-frozen`, the same
model as `deepshrink.load(path, frozen=True)` returns it (deepshrink.runtime.frozen: no module tree).

Example::

    runner = get_engine("torch-fp32").prepare(model, torch.randn(1, 3, 32, 32), threads=1)
    logits = runner(images)
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn.compressed import CompressedConv2d, CompressedLinear, tensor_nbytes
from .engines import Engine, Runner, register_engine
from .frozen import FrozenModel


def float_reference(model: nn.Module) -> nn.Module:
    """A copy of `model` with every compressed layer a plain Conv2d/Linear on its decoded weight and
    no input quantizer: the network the compressed one stands for, at fp32."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if not isinstance(module, (CompressedConv2d, CompressedLinear)):
            continue
        if isinstance(module, CompressedConv2d):
            plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                              module.padding, module.dilation, module.groups, module.bias is not None)
        else:
            plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(module.encoded.dequantize())
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain.eval())
    return model


class TorchRunner(Runner):
    """An eager module run under `torch.inference_mode` on `threads` intra-op threads."""

    def __init__(self, model: nn.Module, threads: int):
        self.model = model.eval()
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(x)

    def resident_bytes(self) -> int:
        # the layers' resident codes at their packed width, not the codes unpacked (nn owns that count)
        return tensor_nbytes(self.model)


@register_engine
class TorchFloat(Engine):
    """The uncompressed network (weights decoded to fp32), PyTorch eager: the reference every speed-up is against."""

    name = "torch-fp32"
    reference = True

    def prepare(self, model, example, threads=1, calibration=None):
        return TorchRunner(float_reference(model), threads)


@register_engine
class TorchEager(Engine):
    """The loaded compressed model itself (`deepshrink.load`), PyTorch eager, activation quantizers included."""

    name = "torch-eager"

    def prepare(self, model, example, threads=1, calibration=None):
        return TorchRunner(model, threads)


class FrozenRunner(Runner):
    """A `FrozenModel` on `threads` intra-op threads; its resident bytes are its one tensor buffer."""

    def __init__(self, model: nn.Module, threads: int):
        self.frozen = FrozenModel(model)
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.frozen(x)

    def resident_bytes(self) -> int:
        return self.frozen.nbytes


@register_engine
class TorchFrozen(Engine):
    """The loaded compressed model frozen (`deepshrink.load(path, frozen=True)`): no nn.Module tree, the
    same outputs bit for bit, inference only."""

    name = "torch-frozen"

    def unsupported_reason(self, model):
        from ..packing.graph import trace

        try:
            trace(model, build=lambda graph: None)
        except Exception as exc:  # noqa: BLE001 - the reason is the line the engine reports
            return str(exc).splitlines()[0]
        return None

    def prepare(self, model, example, threads=1, calibration=None):
        return FrozenRunner(model, threads)


class _X86Runner(TorchRunner):
    """A module quantized for PyTorch's x86 engine; the engine is selected for each call and then restored."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "x86"
        try:
            return super().__call__(x)
        finally:
            torch.backends.quantized.engine = previous

    def resident_bytes(self) -> int:
        state = self.model.state_dict()
        return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


class TorchX86Int8PTQ(Engine):
    """PyTorch's own x86 int8 engine on the float network (FX graph-mode static PTQ with the x86 qconfig over
    the calibration images): the alternative to ONNX Runtime that the integer engine was chosen over.

    Not registered: it quantizes a float network its own way, so it stands beside the float base, not a
    compressed model; the bench's `speed` measure times it on the base (`references: [..., torch-x86-int8-ptq]`)."""

    name = "torch-x86-int8-ptq"
    reference = True

    def unavailable_reason(self):
        if "x86" not in torch.backends.quantized.supported_engines:
            return "this PyTorch has no x86 quantized engine"
        return None

    def prepare(self, model, example, threads=1, calibration=None):
        import warnings

        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        images = example if calibration is None else calibration
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "x86"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FX's deprecation notices
                prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                                      example_inputs=(images[:1],))
                with torch.no_grad():
                    for start in range(0, len(images), 64):
                        prepared(images[start:start + 64])
                quantized = convert_fx(prepared)
        finally:
            torch.backends.quantized.engine = previous
        return _X86Runner(quantized, threads)
