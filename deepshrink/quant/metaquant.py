"""Meta-Quant: a meta network learns the gradient through the quantizer (Chen, Wang, Pan, "MetaQuant:
Learning to Quantize by Learning to Penetrate Non-differentiable Quantization", NeurIPS 2019).

The straight-through estimator (STE) pretends dQ(W)/dW = 1. Meta-Quant instead lets a small network M,
shared by all layers and applied element-wise, map g_Q = dL/dQ(W~) (and W~) to the gradient of the
latent weights (paper Sec. 3, Fig. 2):

    FC-Grad:   dL/dW = c(W) * M(g_Q)                    an MLP on the gradient alone
    MultiFC:   dL/dW = c(W) * g_Q * M(W~)                an MLP on the weight gates the gradient
    LSTMFC:    dL/dW = c(W) * g_Q * FC(LSTM(W~, h_l))    as MultiFC, with a per-layer memory h_l

c(W) is the derivative of the differentiable part of the quantizer (1 for BWN and 1-bit DoReFa;
(1 - tanh^2 W) / max|tanh W| for k-bit DoReFa's tanh normalisation), as in the authors' code.
M is trained jointly with the network by putting its output into the forward pass (paper Sec. 3;
the authors' code, csyhhu/MetaQuant, meta_quantized_module.py):

    W~ = W - lr * (meta_grad + (g - meta_grad).detach())

where meta_grad = c * M(...) is computed from the previous step's g_Q and W~ and g is the latent
gradient applied at the previous step: numerically W~ = W - lr * g (the authors' code), but dL/dW~
flows into meta_grad and so into M's parameters (updated by their own Adam, lr `meta_lr`). After each
backward pass the latent weights receive c * M(g_Q, W~) in place of the STE gradient.

The quantizers themselves (BWN alpha * sign(W), DoReFa k-bit) are the QAT engineer's
(deepshrink.quant.weight_quant), so `convert` yields the same binary / uniform EncodedWeights.

Recipe (deepshrink/recipes/metaquant-bwn.yaml)::

    method: metaquant
    params: {quantizer: bwn, meta_net: multifc, hidden_size: 32}
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.hooks import Hook
from ..errors import UserError
from ..registry import register_method
from .qat import QATConfig, QATMethod
from .weight_quant import BinaryWeight, DoReFaWeight, WeightQuantizer

META_NETS = ("multifc", "fc-grad", "lstmfc")


@dataclass
class MetaQuantConfig(QATConfig):
    """quantizer: "bwn" (alpha * sign(W)) or "dorefa" (k-bit, `weight_bits` in 1..8).
    per_channel: BWN's alpha per output filter (else per layer).
    meta_net: "multifc" | "fc-grad" | "lstmfc" (the paper's three variants).
    hidden_size: width of the meta network; meta_lr: its Adam learning rate.
    """

    quantizer: str = "bwn"
    weight_bits: int = 1
    per_channel: bool = True
    meta_net: str = "multifc"
    hidden_size: int = 32
    meta_lr: float = 1e-3

    def __post_init__(self):
        if self.quantizer not in ("bwn", "dorefa"):
            raise UserError(f"metaquant: quantizer must be 'bwn' or 'dorefa', got {self.quantizer!r}")
        if int(self.weight_bits) != self.weight_bits or not 1 <= self.weight_bits <= 8:
            raise UserError(f"metaquant: weight_bits must be an integer in 1..8, got {self.weight_bits}")
        if self.quantizer == "bwn" and self.weight_bits != 1:
            raise UserError("metaquant: bwn is 1-bit; use quantizer: dorefa for weight_bits > 1")
        if self.meta_net not in META_NETS:
            raise UserError(f"metaquant: meta_net must be one of {', '.join(META_NETS)}, got {self.meta_net!r}")
        if not 1 <= self.hidden_size <= 1024:
            raise UserError(f"metaquant: hidden_size must be in 1..1024, got {self.hidden_size}")
        if not self.meta_lr > 0:
            raise UserError(f"metaquant: meta_lr must be > 0, got {self.meta_lr}")


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().pow(2).mean().sqrt().clamp_min(1e-12)


class MetaNetwork(nn.Module):
    """The shared element-wise meta network M. `forward(key, grad, weight)` -> latent gradient (no c).

    Inputs are divided by their RMS (M sees unit-scale values whatever the layer) and every variant
    starts as the identity map on the gradient (last layer zero-initialised), i.e. as the STE.
    """

    def __init__(self, variant: str, hidden_size: int):
        super().__init__()
        self.variant = variant
        if variant == "lstmfc":
            self.lstm = nn.LSTM(input_size=1, hidden_size=hidden_size)
            self.head = nn.Linear(hidden_size, 1)
        else:
            depth = 3 if variant == "multifc" else 2
            sizes = [1] + [hidden_size] * (depth - 1) + [1]
            layers = []
            for i in range(depth):
                layers.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i < depth - 1:
                    layers.append(nn.Tanh())
            self.mlp = nn.Sequential(*layers)
            self.head = layers[-1]
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.hidden: dict[str, tuple] = {}  # LSTMFC memory per layer, carried across steps (detached)

    def forward(self, key: str, grad: torch.Tensor, weight: torch.Tensor, update_memory: bool = False):
        g = grad.reshape(-1, 1)  # (n, 1)
        if self.variant == "fc-grad":
            scale = _rms(g)
            return (g + scale * self.mlp(g / scale)).reshape(grad.shape)
        w = weight.reshape(-1, 1) / _rms(weight)  # (n, 1)
        if self.variant == "multifc":
            return (g * (1 + self.mlp(w))).reshape(grad.shape)
        state = self.hidden.get(key)
        out, new_state = self.lstm(w.unsqueeze(0), state)  # (1, n, h): n sequences of length 1
        if update_memory:
            self.hidden[key] = tuple(s.detach() for s in new_state)
        return (g * (1 + self.head(out[0]))).reshape(grad.shape)


class MetaWeight(WeightQuantizer):
    """Wraps a BWN / DoReFa weight quantizer: forwards W~ = W - lr (M + (g - M).detach()) and records g_Q = dL/dQ(W~).

    Eval mode, or no meta gradient yet: exactly the wrapped quantizer on W. `encode` is the wrapped one.
    """

    def __init__(self, inner: WeightQuantizer, key: str = ""):
        super().__init__()
        self.inner = inner
        self.bits = inner.bits
        self.key = key
        self.meta_grad: torch.Tensor | None = None  # c * M(...) with its graph, set before each step
        self.applied_grad: torch.Tensor | None = None  # g: the latent gradient applied last step
        self.lr = 0.0
        self.latent: nn.Parameter | None = None  # the layer's weight W
        self.pre: torch.Tensor | None = None  # W~ of the latest forward
        self.quant_grad: torch.Tensor | None = None  # g_Q of the latest backward

    def calibration(self, w: torch.Tensor) -> torch.Tensor | float:
        """c(W) = d(differentiable part of Q)/dW, element-wise (1 for sign-based quantizers)."""
        if isinstance(self.inner, DoReFaWeight) and 1 < self.inner.bits < 32:
            t = torch.tanh(w.detach())
            return (1 - t * t) / t.abs().max().clamp_min(1e-12)
        return 1.0

    def forward(self, w):
        if not self.training:
            return self.inner(w)
        object.__setattr__(self, "latent", w)  # a reference, not a second registration of the Parameter
        if self.meta_grad is not None:
            w = w - self.lr * (self.meta_grad + (self.applied_grad - self.meta_grad).detach())
        self.pre = w.detach()
        q = self.inner(w)
        if q.requires_grad:
            q.register_hook(self._save_quant_grad)
        return q

    def _save_quant_grad(self, grad):
        self.quant_grad = grad.detach()

    def encode(self, w):
        return self.inner.encode(w)


class MetaQuantHook(Hook):
    """Puts M into each forward pass, trains M, and replaces the STE gradient of the latent weights."""

    def __init__(self, meta_net: MetaNetwork, quantizers: list[MetaWeight], meta_lr: float):
        self.meta_net = meta_net
        self.quantizers = quantizers
        self.meta_lr = meta_lr
        self.meta_optimizer = None

    def on_train_start(self, trainer):
        self.meta_net.to(trainer.device)
        self.meta_optimizer = torch.optim.Adam(self.meta_net.parameters(), lr=self.meta_lr)

    def before_step(self, trainer, inputs, targets):
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.meta_optimizer.zero_grad(set_to_none=True)
        for q in self.quantizers:
            if q.quant_grad is None or q.applied_grad is None:
                q.meta_grad = None
                continue
            q.meta_grad = q.calibration(q.latent) * self.meta_net(q.key, q.quant_grad, q.pre)
            q.lr = lr
        return None

    def after_backward(self, trainer):
        if any(q.meta_grad is not None for q in self.quantizers):
            self.meta_optimizer.step()
        with torch.no_grad():
            for q in self.quantizers:
                q.meta_grad = None
                if q.quant_grad is None:
                    continue
                latent = q.calibration(q.latent) * self.meta_net(q.key, q.quant_grad, q.pre, update_memory=True)
                q.latent.grad = latent.to(q.latent.dtype)
                q.applied_grad = latent

    def on_train_end(self, trainer):
        for q in self.quantizers:
            q.meta_grad = q.applied_grad = q.quant_grad = q.pre = q.latent = None

    STEP_STATE = ("applied_grad", "pre", "quant_grad")  # what step t+1's look-ahead weight reads from step t

    def state_dict(self) -> dict:
        """The meta network, its optimizer, the LSTM memory and each layer's last-step tensors: a resumed
        run continues exactly (the meta network lives outside the model, so last.pt's weights miss it)."""
        # q.lr is not saved: before_step sets it from the optimizer whenever it sets a meta gradient
        steps = [{k: getattr(q, k) for k in self.STEP_STATE if getattr(q, k) is not None} for q in self.quantizers]
        return {"meta_net": self.meta_net.state_dict(), "hidden": dict(self.meta_net.hidden),
                "meta_optimizer": self.meta_optimizer.state_dict() if self.meta_optimizer else {},
                "quantizers": steps}

    def load_state_dict(self, state: dict) -> None:
        self.meta_net.load_state_dict(state["meta_net"])
        self.meta_net.hidden = {k: tuple(v) for k, v in state["hidden"].items()}
        if state["meta_optimizer"]:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        for q, saved in zip(self.quantizers, state["quantizers"]):
            for key in self.STEP_STATE:
                setattr(q, key, saved.get(key))


@register_method("metaquant", MetaQuantConfig)
class MetaQuant(QATMethod):
    """Handler: the QAT machinery (layer swap, convert to codes) with MetaWeight-wrapped quantizers."""

    def __init__(self, recipe, layers: dict[str, dict]):
        super().__init__(recipe, layers)
        self.quantizers: list[MetaWeight] = []  # one per swapped layer, found by `prepare`
        # built by `prepare`, after the layer swap: its initial weights are drawn where they always were,
        # so a seed gives the same run as before
        self.meta_net: MetaNetwork | None = None

    def weight_quantizer(self, cfg, layer: nn.Module) -> WeightQuantizer:
        inner = BinaryWeight(cfg.per_channel) if cfg.quantizer == "bwn" else DoReFaWeight(int(cfg.weight_bits))
        return MetaWeight(inner)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self.quantizers = []
        for name, module in model.named_modules():
            quant = getattr(module, "weight_quant", None)
            if isinstance(quant, MetaWeight):
                quant.key = name
                object.__setattr__(quant, "latent", module.weight)  # before any forward (a resumed step reads it)
                self.quantizers.append(quant)
        self.meta_net = MetaNetwork(self.config.meta_net, self.config.hidden_size)
        return model

    def hooks(self) -> list:
        return [MetaQuantHook(self.meta_net, self.quantizers, self.config.meta_lr)]


__all__ = ["MetaNetwork", "MetaQuant", "MetaQuantConfig", "MetaQuantHook", "MetaWeight"]
