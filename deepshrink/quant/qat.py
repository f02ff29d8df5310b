"""The shared base of every quantization-aware-training method.

A QAT method only says which weight quantizer, input quantizer and gradient bit width a layer gets
(and which training hooks it needs); this base swaps the selected Conv2d/Linear layers for
QConv2d/QLinear, initialises the quantizers from the float weights (fine-tuning) or resets the
model first (`from_scratch: true`), trains through the one training loop (`ctx.fit`), and converts
the result to inference form (CompressedConv2d/Linear holding EncodedWeights).

Example (a new method)::

    @dataclass
    class MyConfig(QATConfig):
        weight_bits: int = 4
        def __post_init__(self):
            check_bits("my", "weight_bits", self.weight_bits, 1, 8)

    @register_method("my", MyConfig)
    class My(QATMethod):
        def weight_quantizer(self, cfg, layer):
            return DoReFaWeight(cfg.weight_bits)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..methods import CompressContext, Method
from ..nn import set_module
from .layers import _QuantLayer, quantize_layer
from .weight_quant import WeightQuantizer

FULL_PRECISION = 32


def check_bits(method: str, field_name: str, value, low: int, high: int, allow_off: bool = True) -> None:
    """Raise UserError unless `value` is an int in low..high (or 32 = full precision when allowed)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and (low <= value <= high or (allow_off and value == FULL_PRECISION)):
        return
    allowed = f"an integer in {low}..{high}" + (" or 32 (= full precision, off)" if allow_off else "")
    raise UserError(f"{method}: {field_name} must be {allowed}; got {value!r}")


def check_range(method: str, field_name: str, value, low: float, high: float) -> None:
    """Raise UserError unless low < value < high (a real number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise UserError(f"{method}: {field_name} must be a number in ({low}, {high}); got {value!r}")


@dataclass
class QATConfig:
    """Options every QAT method has. `from_scratch`: re-initialise the model's weights before training."""

    from_scratch: bool = False


class QATMethod(Method):
    """Base handler: subclasses implement `weight_quantizer` (and optionally the others)."""

    kind = "qat"

    # ------------------------------------------------------------------ what a method decides
    def weight_quantizer(self, cfg, layer: nn.Module) -> WeightQuantizer:
        raise NotImplementedError

    def input_quantizer(self, cfg, layer: nn.Module) -> nn.Module | None:
        return None

    def grad_bits(self, cfg) -> int:
        return FULL_PRECISION

    def hooks(self) -> list:
        """Training-loop hooks (deepshrink.engine.hooks.Hook) this method needs."""
        return []

    # ------------------------------------------------------------------ shared machinery
    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap every selected layer for its quantized training form (in place); returns `model`."""
        for name, cfg in self.layer_configs.items():
            layer = model.get_submodule(name)
            if isinstance(layer, _QuantLayer):
                continue
            qlayer = quantize_layer(layer, self.weight_quantizer(cfg, layer), self.input_quantizer(cfg, layer),
                                    self.grad_bits(cfg))
            set_module(model, name, qlayer)
        return model

    def compress(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        if self.config.from_scratch:
            _reset_parameters(model)
        self.prepare(model)
        calibrate(model, ctx.train_data)
        if ctx.train.epochs > 0:
            ctx.fit(model, self.hooks())
        return model

    def training_form(self, model: nn.Module, batch) -> nn.Module:
        """The quantized training form `compress` trains: layers swapped, quantizers initialised from `batch`."""
        self.prepare(model)
        calibrate(model, [batch])
        return model.train()

    def convert(self, model: nn.Module) -> nn.Module:
        for name, module in list(model.named_modules()):
            if isinstance(module, _QuantLayer):
                set_module(model, name, module.to_compressed())
        return model


def _reset_parameters(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


@torch.no_grad()
def calibrate(model: nn.Module, data) -> None:
    """Run one batch so data-initialised quantizers (LSQ step, PACT alpha) set themselves from real
    activations before training; a no-op without data or without such quantizers.

    The batch runs in train mode, with BatchNorm normalising by the batch's own statistics as it will
    during training: in eval mode a fine-tuned model's running statistics do not fit its quantized
    weights (DoReFa's weights are scaled to [-1, 1], ~10x the float weights), so activations come out
    ~10x too large and so would every PACT alpha, which then rounds nearly every activation to 0.
    BatchNorm's running statistics are restored afterwards, so calibration changes no statistic.
    """
    lazy = {n: m for n, m in model.named_modules() if hasattr(m, "initialized") and not bool(m.initialized)}
    if data is None or not lazy:
        return
    inputs = next(iter(data))[0]
    device = next(model.parameters()).device
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    was_training = model.training
    model.train()
    model(inputs.to(device))
    model.train(was_training)
    for module, state in zip(norms, saved):
        module.load_state_dict(state)
    for name, module in lazy.items():
        if not bool(module.initialized):
            raise UserError(f"{name} ({type(module).__name__}) saw no input during calibration: its layer "
                            f"{name.rpartition('.')[0]!r} is not in the forward path; leave it out of the recipe")
