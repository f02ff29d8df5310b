"""Inference-form layers produced by every method's `convert`: an encoded weight, an optional
input quantizer, and a plain conv/linear on the decoded weight.

A layer holds its weight in one of two forms:

- *resident*: only the codes, packed as `deepshrink.nn.resident.ResidentWeight` keeps them (at their
  bit width, a sparse mask as bits); `forward` decodes them into a scratch tensor on every call and
  keeps no float copy. `deepshrink.load` gives layers in this form: a compressed model is small in
  memory as well as on disk.
- *decoded*: the codes plus a float copy of the weight, cached as the `weight` buffer (what a method's
  `convert` gives, so later stages that read or adjust `weight` work as on a float layer) or as a
  trainable `weight` parameter (`decode_weights(model)`, `deepshrink.load(path, decode=True)`: for
  fine-tuning). `release_weights(model)` drops the copy again.

In both forms `layer.weight` is the float weight (in the resident form a fresh decoded tensor: writing
to it changes nothing) and `layer.encoded` the `EncodedWeight`; `deepshrink.pack` writes the codes, never
the float copy. An input quantizer is any packable module (DoReFa/PACT/LSQ activation quantizers,
XNOR's binary input with its scaling map); it may define `scale_output(x, y)` to rescale the layer's
output (XNOR-Net's K * alpha).

Example::

    model = deepshrink.load("model.dsz")      # resident codes
    decode_weights(model)                     # float weights as parameters, e.g. to fine-tune
    release_weights(model)                    # back to codes only
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_packable
from ..encodings import EncodedWeight
from .packable import Packable
from .resident import ResidentWeight


class _CompressedMixin(Packable):
    def _init_encoded(self, encoded: EncodedWeight | None, input_quant: nn.Module | None):
        self.input_quant = input_quant
        self._resident = None  # no codes until load_encoded (deepshrink.load builds layers so)
        if encoded is not None:
            self._resident = ResidentWeight.pack(encoded)
            self.decode_weight(trainable=False)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight: the cached copy when decoded, else decoded from the codes on each access."""
        cached = self._parameters.get("weight")
        if cached is None:
            cached = self._buffers.get("weight")
        if cached is not None:
            return cached
        resident = self.__dict__.get("_resident")
        if resident is None:  # in nn.Conv2d/nn.Linear.__init__, or before load_encoded
            raise AttributeError(f"this {type(self).__name__} holds no codes yet")
        return resident.decode()

    @weight.setter
    def weight(self, value) -> None:
        raise AttributeError(f"{type(self).__name__} holds its weight as codes; call decode_weight() to get a "
                             "float copy that can be assigned, or load_encoded() to replace the codes")

    @property
    def encoded(self) -> EncodedWeight | None:
        """The weight's EncodedWeight (rebuilt from the resident codes on each access); None before
        `load_encoded`."""
        return None if self._resident is None else self._resident.expand()

    @encoded.setter
    def encoded(self, encoded: EncodedWeight) -> None:
        self.load_encoded("weight", encoded)

    @property
    def is_resident(self) -> bool:
        """True when the layer holds only codes (no float copy of the weight)."""
        return "weight" not in self._parameters and "weight" not in self._buffers

    def decode_weight(self, trainable: bool = True) -> torch.Tensor:
        """Cache the decoded float weight: a trainable parameter, or (trainable=False) a buffer."""
        self.release_weight()
        weight = self._resident.decode()
        if trainable:
            self._parameters["weight"] = nn.Parameter(weight)
        else:
            self._buffers["weight"] = weight
        return self.weight

    def release_weight(self) -> None:
        """Drop the float copy; the layer decodes its codes on each call from now on."""
        self._parameters.pop("weight", None)
        self._buffers.pop("weight", None)

    def resident_tensors(self) -> list[torch.Tensor]:
        """The tensors that hold the codes (not in state_dict; deepshrink.pack writes them as codes)."""
        return [] if self._resident is None else self._resident.tensors()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._resident is not None:
            self._resident = self._resident.apply(fn)
        return self

    def encoded_tensors(self) -> dict[str, EncodedWeight]:
        encoded = self.encoded
        trained = encoded is not None and "weight" in self._parameters
        if trained and not torch.equal(self.weight.detach(), encoded.dequantize().to(self.weight)):
            warnings.warn(f"the float weight of this {type(self).__name__} was changed after decoding; the codes "
                          "are what deepshrink.pack writes, so those changes are not packed", stacklevel=2)
        return {"weight": encoded}

    def load_encoded(self, name: str, encoded: EncodedWeight) -> None:
        if name != "weight":
            super().load_encoded(name, encoded)
        if tuple(encoded.shape) != self.weight_shape:
            raise ValueError(f"encoded weight shape {encoded.shape} != layer shape {self.weight_shape}")
        on_device = self.resident_tensors() or ([self.bias] if self.bias is not None else [])
        self._resident = ResidentWeight.pack(encoded)
        if on_device:  # the codes live where the layer lives
            self._resident = self._resident.apply(lambda t, device=on_device[0].device: t.to(device))
        if not self.is_resident:
            self.decode_weight(trainable="weight" in self._parameters)

    def _scratch_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight for one call: the cached copy, or the codes decoded into a temporary tensor."""
        weight = self.weight
        return weight if weight.dtype == x.dtype else weight.to(x.dtype)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quant is None else self.input_quant(x)

    def _scale_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = getattr(self.input_quant, "scale_output", None)
        return y if scale is None else scale(x, y)


@register_packable("compressed_conv2d")
class CompressedConv2d(_CompressedMixin, nn.Conv2d):
    """A Conv2d whose weight is an `EncodedWeight`; built by `CompressedConv2d.from_conv`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, encoded: EncodedWeight | None = None, input_quant=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        del self.weight  # a parameter in nn.Conv2d; here decoded from codes
        self._init_encoded(encoded, input_quant)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, encoded: EncodedWeight, input_quant=None) -> "CompressedConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, encoded, input_quant)
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        return layer.to(conv.weight.device)

    def pack_config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride), padding=list(self.padding),
                    dilation=list(self.dilation), groups=self.groups, bias=self.bias is not None)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x):
        y = F.conv2d(self._quantize_input(x), self._scratch_weight(x), self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        return self._scale_output(x, y)


@register_packable("compressed_linear")
class CompressedLinear(_CompressedMixin, nn.Linear):
    """A Linear whose weight is an `EncodedWeight`; built by `CompressedLinear.from_linear`."""

    def __init__(self, in_features, out_features, bias=True, encoded: EncodedWeight | None = None,
                 input_quant=None):
        nn.Linear.__init__(self, in_features, out_features, bias)
        del self.weight
        self._init_encoded(encoded, input_quant)

    @classmethod
    def from_linear(cls, linear: nn.Linear, encoded: EncodedWeight, input_quant=None) -> "CompressedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, encoded, input_quant)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer.to(linear.weight.device)

    def pack_config(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias is not None)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def forward(self, x):
        y = F.linear(self._quantize_input(x), self._scratch_weight(x), self.bias)
        return self._scale_output(x, y)


def decode_weights(model: nn.Module, trainable: bool = True) -> nn.Module:
    """Give every compressed layer of `model` a float copy of its weight (trainable parameters by
    default, e.g. to fine-tune a loaded model); returns `model`."""
    for module in model.modules():
        if isinstance(module, _CompressedMixin):
            module.decode_weight(trainable)
    return model


def release_weights(model: nn.Module) -> nn.Module:
    """Drop every compressed layer's float copy, so that `model` holds its weights as codes only."""
    for module in model.modules():
        if isinstance(module, _CompressedMixin):
            module.release_weight()
    return model


def tensor_nbytes(model: nn.Module) -> int:
    """Bytes of every tensor `model` holds: parameters, buffers and resident codes (shared storage once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        if isinstance(module, _CompressedMixin):
            tensors += module.resident_tensors()
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def compress_layer(layer: nn.Module, encoded: EncodedWeight, input_quant=None) -> nn.Module:
    """The inference form of a Conv2d or Linear with the given encoded weight."""
    if isinstance(layer, nn.Conv2d):
        return CompressedConv2d.from_conv(layer, encoded, input_quant)
    if isinstance(layer, nn.Linear):
        return CompressedLinear.from_linear(layer, encoded, input_quant)
    raise TypeError(f"cannot compress a {type(layer).__name__}; only Conv2d and Linear")


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (e.g. 'layer1.0.conv1')."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@register_packable("identity")
class PackableIdentity(Packable, nn.Identity):
    """A module a method removed from the network (e.g. XNOR-Net's `drop_relu`), kept as a packable
    pass-through so that `deepshrink.load` rebuilds the compressed network, not the original one."""

    def pack_config(self) -> dict:
        return {}
