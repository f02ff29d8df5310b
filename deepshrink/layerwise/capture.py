"""Capture a layer's inputs with a forward hook and turn them into the columns its weight multiplies.

A Conv2d with weight (out, in/G, kh, kw) computes, for every output position, `w_o . x_patch` where
`x_patch` is the (in/G * kh * kw) window of its group's input channels (`F.unfold`, any stride,
padding, dilation and groups, depthwise included). A Linear's columns are its inputs. Columns come
back grouped: (G, N, D), so that `columns[g] @ W[g].T` equals the layer's output for group g
(bias excluded), with W[g] = weight.reshape(G, out/G, D)[g].

Example::

    with InputCapture(model.layer1[0].conv1) as cap:
        run_until(cap, model, images)   # stops the forward pass at the layer
    cols = layer_columns(model.layer1[0].conv1, cap.inputs[0])   # (G, N, D)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StopForward(Exception):
    """Raised by a capture hook to skip the rest of the network once the layer's input is seen."""


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as (G, out/G, D): row o of group g multiplies that group's input columns."""
    weight = layer.weight.detach()
    groups = getattr(layer, "groups", 1)
    return weight.reshape(groups, weight.shape[0] // groups, -1)  # (G, R, D)


def layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input columns of `layer` for input batch `x`: (G, N, D) with N = samples (x positions).

    For a conv, N = batch * output positions and D = in/G * kh * kw in the weight's (c, kh, kw) order.
    """
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):
            _resolve_string_padding(layer)
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding = 0
        else:
            padding = layer.padding
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding,
                        stride=layer.stride)  # (B, C*kh*kw, L)
        groups = layer.groups
        batch, _, positions = cols.shape
        cols = cols.reshape(batch, groups, -1, positions)  # (B, G, D, L)
        return cols.permute(1, 0, 3, 2).reshape(groups, batch * positions, -1)  # (G, B*L, D)
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).unsqueeze(0)  # (1, N, D)
    raise TypeError(f"layer-wise methods handle Conv2d and Linear, not {type(layer).__name__}")


def _resolve_string_padding(layer: nn.Conv2d) -> None:
    """Turn padding='same'/'valid' into numbers so unfold can use it (odd kernels, stride 1)."""
    if layer.padding == "valid":
        layer.padding = (0, 0)
    elif layer.padding == "same":
        layer.padding = tuple(d * (k - 1) // 2 for k, d in zip(layer.kernel_size, layer.dilation))


def chunked_columns(layer: nn.Module, x: torch.Tensor, max_elements: int = 2**25):
    """Yield `layer_columns` over slices of the batch so no chunk holds more than ~max_elements floats."""
    per_item = max(1, layer_columns(layer, x[:1]).numel())
    step = max(1, max_elements // per_item)
    for start in range(0, x.shape[0], step):
        yield layer_columns(layer, x[start:start + step])


class InputCapture:
    """Context manager: a forward pre-hook on `layer` that hands each input batch to `on_input`.

    With `stop=True` the hook raises `StopForward` so the rest of the network is not computed;
    `run(model, batches)` swallows it.
    """

    def __init__(self, layer: nn.Module, on_input, stop: bool = True):
        self.layer, self.on_input, self.stop = layer, on_input, stop
        self._handle = None

    def _hook(self, module, args):
        self.on_input(args[0].detach())
        if self.stop:
            raise StopForward

    def __enter__(self):
        self._handle = self.layer.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def run(self, model: nn.Module, batches) -> None:
        """Forward every batch of inputs through `model` (no grad), stopping at the layer."""
        with torch.no_grad():
            for inputs in batches:
                try:
                    model(inputs)
                except StopForward:
                    pass


def execution_order(model: nn.Module, names: list[str], example: torch.Tensor) -> list[str]:
    """`names` sorted by when each module first runs in a forward pass of `example` (unused last)."""
    seen: list[str] = []
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda m, a, name=name: seen.append(name) if name not in seen else None))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen + [n for n in names if n not in seen]
