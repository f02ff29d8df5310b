"""Weight quantizer modules: the state (learned scales) of one layer's weight quantizer.

A weight quantizer maps the latent float weight to the weight used in the forward pass
(`forward(w)`), and encodes it as integer codes plus decoding floats (`encode(w)`) such that
`encode(w).dequantize()` equals `forward(w)` in eval mode. `initialize(w)` sets learned scales
from the float weights (fine-tuning). `bits` is what the complexity report reads.

Example::

    quant = BinaryWeight(per_channel=True)
    w_q = quant(conv.weight)                  # alpha_o * sign(W), STE
    enc = quant.encode(conv.weight)           # EncodedWeight("binary", codes in {0, 1}, scale alpha)
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import EncodedWeight
from . import learned_step as L
from . import primitives as P


def _scale_vector(scale: torch.Tensor) -> torch.Tensor:
    """A per-filter (out,) or per-layer (1,) decoding parameter, detached, float32."""
    return scale.detach().float().reshape(-1).clone()


class WeightQuantizer(nn.Module):
    """Base: identity (full precision, bits = 32)."""

    bits = 32

    def initialize(self, w: torch.Tensor) -> None:
        """Set learned parameters from the float weight (no-op for parameter-free quantizers)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    @torch.no_grad()
    def encode(self, w: torch.Tensor) -> EncodedWeight:
        return EncodedWeight("float", tuple(w.shape), params={"values": w.detach().float().clone()})


class BinaryWeight(WeightQuantizer):
    """BWN / XNOR-Net weights: alpha * sign(W), alpha = mean |W| per filter (Rastegari et al. 2016, Eq. 4)."""

    bits = 1

    def __init__(self, per_channel: bool = True):
        super().__init__()
        self.per_channel = per_channel

    def forward(self, w):
        return P.bwn_quantize(w, self.per_channel)

    @torch.no_grad()
    def encode(self, w):
        return EncodedWeight("binary", tuple(w.shape), codes=P.binary_codes(w),
                             params={"scale": _scale_vector(P.bwn_scale(w, self.per_channel))})


class TernaryWeight(WeightQuantizer):
    """TWN weights: alpha * {-1, 0, 1} with Delta = 0.7 E|W| (Li & Liu 2016, Sec. 3.2)."""

    bits = 2

    def __init__(self, threshold_factor: float = 0.7, per_channel: bool = False):
        super().__init__()
        self.threshold_factor = threshold_factor
        self.per_channel = per_channel

    def forward(self, w):
        return P.twn_quantize(w, self.threshold_factor, self.per_channel)

    @torch.no_grad()
    def encode(self, w):
        delta = P.twn_threshold(w, self.threshold_factor, self.per_channel)
        alpha = _scale_vector(P.twn_scale(w, delta, self.per_channel))
        return EncodedWeight("ternary", tuple(w.shape), codes=P.ternary_codes(w, delta, self.per_channel),
                             params={"pos_scale": alpha, "neg_scale": alpha.clone()})


class TTQWeight(WeightQuantizer):
    """TTQ weights: learned W_p, -W_n and 0 with Delta = t max|W| (Zhu et al. 2017, Eq. 6-9)."""

    bits = 2

    def __init__(self, threshold: float = 0.05):
        super().__init__()
        self.threshold = threshold
        self.w_p = nn.Parameter(torch.ones(1))
        self.w_n = nn.Parameter(torch.ones(1))

    @torch.no_grad()
    def initialize(self, w):
        w_p, w_n = P.ttq_init_scales(w, self.threshold)
        self.w_p.copy_(w_p)
        self.w_n.copy_(w_n)

    def forward(self, w):
        return P.ttq_quantize(w, self.w_p, self.w_n, self.threshold)

    @torch.no_grad()
    def encode(self, w):
        delta = P.ttq_threshold(w, self.threshold)
        return EncodedWeight("ternary", tuple(w.shape), codes=P.ternary_codes(w, delta),
                             params={"pos_scale": _scale_vector(self.w_p), "neg_scale": _scale_vector(self.w_n)})


class DoReFaWeight(WeightQuantizer):
    """DoReFa k-bit weights (Zhou et al. 2016, Eq. 7-9); bits = 32 leaves the weight in float."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w):
        return P.dorefa_weight(w, self.bits)

    @torch.no_grad()
    def encode(self, w):
        if self.bits >= 32:
            return super().encode(w)
        if self.bits == 1:
            return EncodedWeight("binary", tuple(w.shape), codes=P.binary_codes(w),
                                 params={"scale": _scale_vector(w.abs().mean())})
        codes, step = P.dorefa_weight_codes(w, self.bits)
        n = 2**self.bits - 1
        return EncodedWeight("uniform", tuple(w.shape), codes=codes, bits=self.bits,
                             params={"scale": _scale_vector(step), "zero_point": torch.tensor([n / 2])})


class LSQWeight(WeightQuantizer):
    """LSQ signed weights with a learned step (Esser et al. 2020, Eq. 1-3), step init 2<|w|>/sqrt(Q_P),
    step-gradient scale 1/sqrt(N_W Q_P)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.q_n, self.q_p = L.lsq_range(bits, signed=True)
        self.step = nn.Parameter(torch.ones(1))

    @torch.no_grad()
    def initialize(self, w):
        self.step.copy_(L.lsq_init_step(w, self.q_p).reshape(1))

    def forward(self, w):
        return L.lsq_quantize(w, self.step, self.q_n, self.q_p, L.lsq_grad_scale(w.numel(), self.q_p))

    @torch.no_grad()
    def encode(self, w):
        codes = L.lsq_codes(w, self.step, self.q_n, self.q_p)
        return EncodedWeight("uniform", tuple(w.shape), codes=codes, bits=self.bits,
                             params={"scale": _scale_vector(self.step),
                                     "zero_point": torch.tensor([float(self.q_n)])})

