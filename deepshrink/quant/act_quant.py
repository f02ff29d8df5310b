"""Input-activation quantizers: packable modules used unchanged in training and in inference form.

The same module sits in front of a quantized layer during training (QConv2d/QLinear) and in front
of the converted CompressedConv2d/Linear, so the packed model's activation quantizer is by
construction the training-time eval-mode one. Learned parameters (PACT's alpha, LSQ's step) are
parameters, statistics are buffers: both travel in the state_dict. `bits` is read by the complexity
report; `pack_config()` gives the constructor arguments `deepshrink.load` rebuilds it from.

Example::

    act = PACTActivation(bits=4)
    y = act(torch.relu(x))     # clip to [0, alpha], 4-bit grid; alpha learned
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import Packable
from ..registry import register_packable
from . import learned_step as L
from . import primitives as P


@register_packable("dorefa_activation")
class DoReFaActivation(Packable, nn.Module):
    """k-bit DoReFa activation: quantize_k(clip(x, 0, 1)) (Zhou et al. 2016, Sec. 2.6)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)

    def pack_config(self) -> dict:
        return {"bits": self.bits}

    def forward(self, x):
        return P.dorefa_activation(x, self.bits)

    def codes(self, x) -> torch.Tensor:
        """Integer activation codes 0..2^k-1 (value = code / (2^k - 1))."""
        return P.dorefa_activation_codes(x, self.bits)


class _LazyInit(nn.Module):
    """Data-driven initialisation from the first batch seen (a persistent `initialized` flag)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _maybe_init(self, x: torch.Tensor) -> None:
        if not bool(self.initialized):
            with torch.no_grad():
                self.init_from(x.detach())
            self.initialized.fill_(True)

    def init_from(self, x: torch.Tensor) -> None:
        raise NotImplementedError


@register_packable("dorefa_activation_scaled")
class ScaledDoReFaActivation(Packable, _LazyInit):
    """DoReFa's k-bit activation on [0, s] instead of [0, 1]: s * quantize_k(clip(x / s, 0, 1)), s a fixed
    (not learned) range, given or set from the first batch (its 99.9th percentile of max(x, 0)).

    Deviation from Zhou et al. 2016, for fine-tuning: the paper trains from scratch, so its activations
    learn to live in [0, 1]; a trained float network's activations reach ~20, and clipping them to [0, 1]
    starts fine-tuning far from the float model (ResNet-20: loss 2.69 vs 0.32). With BatchNorm after the
    quantized conv, the rescaled network is the paper's with the producer's BN scaled by 1 / s (the next
    BN normalises the factor away), so only the starting point changes, not the quantizer's form.
    """

    def __init__(self, bits: int, scale: float | None = None):
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("scale", torch.ones(1) if scale is None else torch.full((1,), float(scale)))
        if scale is not None:
            self.initialized.fill_(True)

    def init_from(self, x):
        self.scale.fill_(percentile_999(x))

    def pack_config(self) -> dict:
        return {"bits": self.bits}

    def forward(self, x):
        self._maybe_init(x)
        return P.dorefa_activation(x / self.scale, self.bits) * self.scale

    def codes(self, x) -> torch.Tensor:
        """Integer codes 0..2^k-1 (value = scale * code / (2^k - 1))."""
        return P.dorefa_activation_codes(x / self.scale, self.bits)


def percentile_999(x: torch.Tensor) -> float:
    """The 99.9th percentile of max(x, 0) (at least 1e-3): a range that ignores the rare outliers."""
    flat = x.clamp(min=0).reshape(-1)
    k = max(1, int(0.999 * flat.numel()))
    return max(float(flat.kthvalue(k).values), 1e-3)


@register_packable("pact_activation")
class PACTActivation(Packable, _LazyInit):
    """PACT (Choi et al. 2018, Eq. 1-3): y = clip(x, 0, alpha), k-bit uniform on [0, alpha], alpha learned.

    `alpha_init=None` sets alpha from the first batch (its 99.9th percentile of max(x, 0)), which
    suits fine-tuning; the paper starts from a large constant (e.g. 10). `alpha_decay` is the
    coefficient of the L2 penalty alpha_decay / 2 * alpha^2 added by `PACTPenalty`.
    """

    def __init__(self, bits: int, alpha_init: float | None = None, alpha_decay: float = 0.0):
        super().__init__()
        self.bits = int(bits)
        self.alpha_decay = alpha_decay
        self.alpha = nn.Parameter(torch.full((1,), 10.0 if alpha_init is None else float(alpha_init)))
        if alpha_init is not None:
            self.initialized.fill_(True)

    def init_from(self, x):
        self.alpha.fill_(percentile_999(x))

    def pack_config(self) -> dict:
        return {"bits": self.bits}

    def forward(self, x):
        self._maybe_init(x)
        return L.pact_quantize(x, self.alpha, self.bits)

    def codes(self, x) -> torch.Tensor:
        return L.pact_codes(x, self.alpha, self.bits)


def lsq_mse_step(v: torch.Tensor, q_n: int, q_p: int, candidates: int = 80,
                 max_samples: int = 2**20) -> torch.Tensor:
    """The step s in {0.05, 0.10, ..., 4.0} x the LSQ init that minimises mean (v_hat(s) - v)^2 over `v`.

    On the shared ResNet-20's post-ReLU inputs the paper's 2<|v|>/sqrt(Q_P) is 1-3x too small per
    layer, and an untrained 2-bit network starts far more accurate from this step than from the
    paper's (measured: benchmarks/results/lsq_act_init.json, `act_init` "mse" against "paper"; the
    lsq-act-init bench suite measures it again on validation images).
    At most `max_samples` values (a fixed random draw) are scored.
    """
    v = v.detach().flatten().float()
    if v.numel() > max_samples:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:max_samples]]
    base = L.lsq_init_step(v, q_p)
    if float(base) == 0.0:
        return base
    steps = base * torch.linspace(0.05, 0.05 * candidates, candidates)
    errors = torch.stack([(torch.clamp(torch.round(v / s), -q_n, q_p) * s - v).pow(2).mean() for s in steps])
    return steps[int(errors.argmin())]


@register_packable("lsq_activation")
class LSQActivation(Packable, _LazyInit):
    """LSQ activations (Esser et al. 2020, Eq. 1-3): learned step s, init 2<|x|>/sqrt(Q_P) from the
    first batch, step-gradient scale 1/sqrt(N_F Q_P) with N_F the features per sample.

    Unsigned (Q_N = 0, Q_P = 2^b - 1) unless `signed`, which `None` decides from the first batch
    (any negative input -> signed). The decision is a buffer, so a checkpoint reloaded into a fresh
    module (resume, best.pt) keeps a signed grid signed.

    `init="mse"` (a deviation, off by default) starts instead from the step that minimises the
    quantization error on the first batch (`lsq_mse_step`); the paper's init stays the default.
    """

    def __init__(self, bits: int, signed: bool | None = None, init: str = "paper"):
        super().__init__()
        self.bits = int(bits)
        self.init = init
        self.register_buffer("signed_code", torch.tensor(-1, dtype=torch.int8))  # -1 undecided, 0 no, 1 yes
        self.signed = signed
        self.step = nn.Parameter(torch.ones(1))

    @property
    def signed(self) -> bool | None:
        code = int(self.signed_code)
        return None if code < 0 else bool(code)

    @signed.setter
    def signed(self, value: bool | None) -> None:
        self.signed_code.fill_(-1 if value is None else int(bool(value)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state saved before the flag was a buffer: keep the flag this module was built with
        state_dict.setdefault(prefix + "signed_code", self.signed_code.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def q_range(self) -> tuple[int, int]:
        return L.lsq_range(self.bits, bool(self.signed))

    def init_from(self, x):
        if self.signed is None:
            self.signed = bool((x < 0).any())
        q_n, q_p = self.q_range
        step = lsq_mse_step(x, q_n, q_p) if self.init == "mse" else L.lsq_init_step(x, q_p)
        self.step.fill_(float(step))

    def pack_config(self) -> dict:
        return {"bits": self.bits, "signed": bool(self.signed)}

    def forward(self, x):
        self._maybe_init(x)
        q_n, q_p = self.q_range
        per_sample = x[0].numel() if x.dim() > 1 else x.numel()
        return L.lsq_quantize(x, self.step, q_n, q_p, L.lsq_grad_scale(per_sample, q_p))

    def codes(self, x) -> torch.Tensor:
        q_n, q_p = self.q_range
        return L.lsq_codes(x, self.step, q_n, q_p)


@register_packable("xnor_activation")
class XNORActivation(Packable, nn.Module):
    """XNOR-Net's binary input (Rastegari et al. 2016, Sec. 3.2) with its scaling map.

    forward: sign(BN(x)) with the STE 1{|.| <= 1}; `scale_output(x, y)` multiplies the binary
    layer's output by K = A * k, A = mean_c |BN(x)|, k a box filter of the conv's kernel size
    (same stride/padding/dilation); for a Linear layer K = mean over features of |BN(x)|. A Linear's
    input may carry leading dimensions, (B, T, C) in a transformer: BN and K then normalise and average
    over the features C (BN's statistics over B and T), never over T.

    Block order: the paper's block is BN -> binary activation -> binary conv -> pool. Applied to an
    existing network (e.g. ResNet: conv -> BN -> ReLU), we put a BatchNorm (affine, `bn=True`) in
    this module, so every binary conv reads BN -> sign -> conv, and keep the network's own BN/ReLU
    and pooling where they are; without it, sign() of a post-ReLU input would be all +1.

    `scaling_map=False` leaves K out (output y, the weights' alpha kept), as Bi-Real Net does (XNOR-Net++
    learns its scales instead of computing K): a BatchNorm after the layer already rescales each
    channel. Not the paper's layer; measured in deepshrink/recipes/xnor.yaml (the default; xnor-paper has K).
    """

    bits = 1

    def __init__(self, num_features: int, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), conv: bool = True, bn: bool = True, scaling_map: bool = True):
        super().__init__()
        self.num_features, self.conv, self.has_bn = int(num_features), bool(conv), bool(bn)
        self.scaling_map = bool(scaling_map)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        bn_cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
        self.bn = bn_cls(num_features) if bn else nn.Identity()
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def pack_config(self) -> dict:
        return dict(num_features=self.num_features, kernel_size=list(self.kernel_size),
                    stride=list(self.stride), padding=list(self.padding), dilation=list(self.dilation),
                    conv=self.conv, bn=self.has_bn, scaling_map=self.scaling_map)

    def _bn(self, x):
        if self.conv or x.dim() <= 2:
            return self.bn(x)
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)  # (B*T, C): features, not T, normalised

    def _normalized(self, x):
        if self._cache is not None and self._cache[0] is x:
            return self._cache[1]  # BN already applied to this input by forward (one stats update)
        return self._bn(x)

    def forward(self, x):
        normalized = self._bn(x)
        self._cache = (x, normalized)
        return P.sign_ste(normalized)

    def scale_output(self, x, y):
        """y * K (y with `scaling_map=False`). K is a constant of the backward pass: the paper's training
        (Algorithm 1) sends gradients to the inputs through sign's STE only."""
        out = y * self._k(x) if self.scaling_map else y
        self._cache = None
        return out

    @torch.no_grad()
    def _k(self, x):
        abs_mean = self._normalized(x).abs().mean(dim=1 if self.conv else -1, keepdim=True)  # (N, 1, H, W), (..., 1)
        if not self.conv:
            return abs_mean
        return P.xnor_scaling_map(abs_mean, self.kernel_size, self.stride, self.padding, self.dilation)

    def codes(self, x) -> torch.Tensor:
        return P.binary_codes(self._bn(x))
