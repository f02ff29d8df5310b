"""Integer forms of a loaded compressed model: weight codes as int8 times a per-channel scale, and
the uint8 grid each trained activation quantizer rounds to. The integer engine
(`onnxruntime-int8`, deepshrink/runtime/qdq_graph.py) writes these into a QDQ ONNX graph.
`quantizer_noise` perturbs those grids' inputs: the yardstick for how close the engine can come.

Weights (`weight_integer_form`): every encoding whose levels are integer multiples of one scale
per output channel passes through exactly, W = q * scale with q an int8 (-128..127):

- binary   q = 2c - 1                           scale = scale
- ternary  q = c                                scale = pos_scale (when pos_scale == neg_scale)
           q = p c (c > 0), n c (c < 0)           scale = (pos + neg) / (p + n) (TTQ's two scales: the
           integers p, n <= 127 whose ratio is nearest pos / neg; the one deviation from "exactly",
           refused when either scale would move by more than SCALE_TOLERANCE of itself)
- uniform  q = c - z (integer z), or 2c - 2z with scale / 2 (half-integer z: DoReFa's symmetric grid)
- pow2     q = sign(c) 2^(|c| - 1)              scale = alpha (L-DNQ; levels <= 15 so |q| <= 64)
- sparse   q = inner q * mask

On x86 CPUs without VNNI (`pairs_saturate`), ONNX Runtime's u8s8 kernels add each pair of uint8 x int8
products in 16 bits (vpmaddubsw), which saturates when 2 x max input code x max |q| > 32767. There the
codes must stay within `weight_limit(input qmax)` (64 for 8-bit inputs, as ONNX Runtime's `reduce_range`
7-bit weights): codes beyond it are refused, TTQ's p, n are chosen within it (so its scales may move by
up to ~1% instead of 0.5%), and float layers get 7-bit weights (qdq_rewrite).

Activations (`activation_grid`): value = (code - zero_point) * scale with code in qmin..qmax, a
uint8 range. DoReFa ([0, 1] or [0, s]) and PACT ([0, alpha]) are unsigned k-bit grids; LSQ's is
unsigned or signed (zero point Q_N).

Example::

    form = weight_integer_form(layer.encoded)   # None, or (q int8 (out, ...), scale float32 (out,))
    grid = activation_grid(layer.input_quant)   # None, or Grid(scale, zero_point, qmin, qmax)
    with quantizer_noise(model, steps=0.01):     # the file, each quantizer's input off by ~1% of a step
        logits = model(x)
"""
from __future__ import annotations

import platform
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..nn.compressed import CompressedConv2d, CompressedLinear
from ..encodings import EncodedWeight, per_channel
from ..quant.act_quant import DoReFaActivation, LSQActivation, PACTActivation, ScaledDoReFaActivation

INT8_RANGE = (-128, 127)  # weight zero point 0: MLAS's symmetric u8s8 kernels
SCALE_TOLERANCE = 5e-3  # the relative error TTQ's two scales may take as one int8 grid (module docstring): any
# ratio in [1/127, 127] has integers p, n <= 127 within 1/254 of it, and near 1 that bound is reached;
# with p, n <= limit < 127 the bound is 1/(2 limit) and the tolerance grows as 127 / limit
INT16_MAX = 32767
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...] | None:
    """This CPU's flags from /proc/cpuinfo, or None where they cannot be read (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((tuple(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)


def pairs_saturate() -> bool:
    """True on an x86 CPU without VNNI (neither AVX512-VNNI nor AVX-VNNI), this machine's `saturates`."""
    return saturates(platform.machine(), cpu_flags())


def saturates(machine: str, flags: list[str] | None) -> bool:
    """True where ONNX Runtime's u8s8 kernels add pairs of products in 16 bits and saturate for wide codes:
    x86 (`machine`) without VNNI in its CPU `flags`. An x86 CPU whose flags are unknown (None) counts as
    saturating: 7-bit weights cost little, a saturated sum a wrong answer. ARM: MLAS widens before it adds."""
    if machine.lower() not in X86:
        return False
    return flags is None or not ({"avx512_vnni", "avx_vnni"} & set(flags))


def weight_limit(input_qmax: int = 255, saturating: bool = False) -> int:
    """The largest |weight code| an integer layer reading uint8 codes up to `input_qmax` may have: 127, or on
    a saturating CPU the largest with 2 x input_qmax x |q| <= 32767 (64 for 8-bit inputs)."""
    if not saturating:
        return INT8_RANGE[1]
    return min(INT8_RANGE[1], INT16_MAX // (2 * max(1, int(input_qmax))))


@dataclass(frozen=True)
class Grid:
    """A uint8 activation grid: value = (code - zero_point) * scale, code in qmin..qmax."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def clips(self) -> bool:
        """True when the grid is narrower than uint8, so saturation alone does not clip to it."""
        return (self.qmin, self.qmax) != (0, 255)


def _integers(encoded: EncodedWeight, limit: int = INT8_RANGE[1]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(q int64 of the weight's shape, scale (out,)) or the reason there is none; the encoding owns its
    integer form (`EncodedWeight.integer_form`, or `no_integer_form` why there is none), this only asks
    for one scale per output channel."""
    form = encoded.integer_form()
    if form is None:
        return encoded.encoding.no_integer_form(encoded)
    out = encoded.shape[0]
    pos, neg = per_channel(form.pos_scale, out), per_channel(form.neg_scale, out)
    if not torch.equal(pos, neg):
        return _two_scales(form.q.long(), pos, neg, limit)
    zero = per_channel(form.zero_point, out).long().reshape(out, *[1] * (form.q.dim() - 1))
    return form.q.long() - zero, pos


def _two_scales(codes: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                limit: int = INT8_RANGE[1]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """Ternary codes with a positive scale `pos` and a negative one `neg` (out,) as one int8 grid: per
    channel the integers p, n in 1..limit whose ratio p / n is nearest pos / neg, q = p c or n c, and
    scale (pos + neg) / (p + n); refused when a scale moves by more than SCALE_TOLERANCE x 127 / limit
    of itself."""
    if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) > 1):
        return "weights with different positive and negative scales are one integer grid only when ternary"
    tolerance = SCALE_TOLERANCE * INT8_RANGE[1] / limit
    candidates = torch.arange(1, limit + 1, dtype=torch.float64)  # (limit,) values of n
    ratio = (pos.double() / neg.double())[:, None]  # (out, 1)
    p_of_n = (candidates * ratio).round().clamp(1, limit)  # (out, limit)
    n_of_p = (candidates / ratio).round().clamp(1, limit)
    p_all = torch.cat([p_of_n, candidates.expand_as(p_of_n)], 1)  # (out, 2 limit): both ways round
    n_all = torch.cat([candidates.expand_as(n_of_p), n_of_p], 1)
    scale = (pos.double()[:, None] + neg.double()[:, None]) / (p_all + n_all)
    error = torch.maximum((p_all * scale / pos.double()[:, None] - 1).abs(),
                          (n_all * scale / neg.double()[:, None] - 1).abs())
    best = error.argmin(1, keepdim=True)  # (out, 1)
    worst = float(error.gather(1, best).max())
    if worst > tolerance:
        return (f"ternary scales {float(pos.max()):.3g} / {float(neg.min()):.3g} have no ratio of integers "
                f"<= {limit} within {tolerance:.2g} (best {worst:.2g})")
    p, n = p_all.gather(1, best), n_all.gather(1, best)  # (out, 1)
    shape = (-1, *[1] * (codes.dim() - 1))
    q = torch.where(codes > 0, codes * p.reshape(shape).long(), codes * n.reshape(shape).long())
    return q, scale.gather(1, best).reshape(-1).float()


def weight_integer_form(encoded: EncodedWeight, limit: int = INT8_RANGE[1]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(q int8 of the weight's shape, scale float32 (out,)) with W = q * scale per output channel, or
    one line saying why these codes are not int8 integers times a per-channel scale. `limit` (< 127 on a
    saturating CPU, `weight_limit`): the largest |q| the kernels add without saturating."""
    form = _integers(encoded, limit)
    if isinstance(form, str):
        return form
    q, scale = form
    if q.numel() and (int(q.min()) < INT8_RANGE[0] or int(q.max()) > INT8_RANGE[1]):
        return f"{encoded.kind} codes span {int(q.min())}..{int(q.max())}, beyond int8's {INT8_RANGE[0]}..{INT8_RANGE[1]}"
    if q.numel() and limit < INT8_RANGE[1] and int(q.abs().max()) > limit:
        return (f"{encoded.kind} codes reach {int(q.abs().max())}, beyond {limit}: on this CPU (no VNNI) ONNX "
                f"Runtime's int8 kernels add pairs in 16 bits, which saturate beyond +-{limit} for these inputs")
    if not bool((scale > 0).all()):
        return f"{encoded.kind} weights have a scale <= 0"
    return q.to(torch.int8), scale


def activation_grid(quantizer: nn.Module) -> Grid | str:
    """The uint8 grid `quantizer` (in eval mode) rounds to, or one line saying why there is none."""
    bits = getattr(quantizer, "bits", None)
    if bits is None or not 1 <= int(bits) <= 8:
        return f"{type(quantizer).__name__} has {bits} bits; the integer engine takes 1..8"
    levels = 2**int(bits) - 1
    if isinstance(quantizer, DoReFaActivation):
        return Grid(1.0 / levels, 0, 0, levels)
    if isinstance(quantizer, ScaledDoReFaActivation):
        return Grid(float(quantizer.scale) / levels, 0, 0, levels)
    if isinstance(quantizer, PACTActivation):
        return Grid(float(quantizer.alpha.detach()) / levels, 0, 0, levels)
    if isinstance(quantizer, LSQActivation):
        q_n, q_p = quantizer.q_range
        return Grid(float(quantizer.step.detach()), q_n, 0, q_n + q_p)
    return f"{type(quantizer).__name__} is not a uniform activation grid"


def minmax_grid(low: float, high: float) -> Grid:
    """The 8-bit uint8 grid of a calibrated range (ONNX Runtime's MinMax: the range widened to hold 0).

    MinMax rather than a percentile: on the DoReFa W4A4 ResNet-20, ranges cut at the 99.99th or 99.999th
    percentile agreed with the file no better than MinMax (a one-off check on 1,000 CIFAR-10 test images,
    not kept as a result), and MinMax is what ONNX Runtime's own calibration does."""
    low, high = min(0.0, low), max(0.0, high)
    scale = (high - low) / 255 or 1.0
    zero_point = int(min(255, max(0, round(-low / scale))))
    return Grid(scale, zero_point, 0, 255)


@contextmanager
def quantizer_noise(model: nn.Module, steps: float, seed: int = 0):
    """Within the block, every activation quantizer of `model` (a compressed layer's `input_quant`) sees
    its input plus Gaussian noise of `steps` times its grid step (one generator seeded with `seed`).

    The yardstick for an engine that cannot follow the file's arithmetic bit for bit: in a low-bit
    network a code flipped by a tiny error flips others downstream, so the file's own predictions move
    under noise far below one rounding step (the `engine_agreement` bench measure,
    deepshrink/bench/measures_runtime.py).
    """
    generator = torch.Generator().manual_seed(seed)
    handles = []

    def add_noise(step: float):
        return lambda _, inputs: (inputs[0] + steps * step * torch.randn(inputs[0].shape, generator=generator),)

    try:
        for name, module in model.named_modules():
            if isinstance(module, (CompressedConv2d, CompressedLinear)) and module.input_quant is not None:
                grid = activation_grid(module.input_quant)
                if isinstance(grid, str):
                    raise ValueError(f"{name}: {grid}")
                handles.append(module.input_quant.register_forward_pre_hook(add_noise(grid.scale)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
