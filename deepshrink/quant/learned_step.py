"""Quantizers whose step or clipping level is a trained parameter: LSQ (Esser et al. 2020) and PACT
(Choi et al. 2018), pure tensor functions with their gradient rules, as in `primitives` (which keeps the
fixed-grid ones: sign, BWN / XNOR-Net, TWN, TTQ, DoReFa).

Example::

    q_n, q_p = lsq_range(bits=2, signed=False)
    a_q = lsq_quantize(x, step, q_n, q_p, lsq_grad_scale(x[0].numel(), q_p))   # step is learned
    a_q = pact_quantize(x, alpha, bits=4)                                      # alpha is learned
"""
from __future__ import annotations

import math

import torch

from .primitives import window_grad


# ----------------------------------------------------------------------------- LSQ
def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P) of LSQ (Esser et al. 2020, Sec. 2): signed 2^(b-1), 2^(b-1) - 1; unsigned 0, 2^b - 1."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lsq_init_step(v: torch.Tensor, q_p: int) -> torch.Tensor:
    """LSQ's step initialisation (Esser et al. 2020, Sec. 2.1): s = 2 <|v|> / sqrt(Q_P)."""
    return 2 * v.detach().abs().mean() / math.sqrt(q_p)


def lsq_grad_scale(numel: int, q_p: int) -> float:
    """LSQ's step-gradient scale (Esser et al. 2020, Sec. 2.2): g = 1 / sqrt(N * Q_P)."""
    return 1.0 / math.sqrt(numel * q_p)


class _LSQ(torch.autograd.Function):
    """LSQ in one node (Esser et al. 2020): forward Eq. 1-2; backward Eq. 3 for the step (times the
    gradient scale g), 1{-Q_N <= v/s <= Q_P} for v (STE through round)."""

    @staticmethod
    def forward(ctx, v, step, q_n, q_p, grad_scale):
        r = v / step
        q = torch.clamp(r, -q_n, q_p).round_()
        ctx.save_for_backward(r, q, step)
        ctx.q_n, ctx.q_p, ctx.grad_scale = q_n, q_p, grad_scale
        return q * step

    @staticmethod
    def backward(ctx, grad):
        r, q, step = ctx.saved_tensors
        grad_v = window_grad(grad, r, -ctx.q_n, ctx.q_p)
        # Eq. 3 summed: ds = q - r inside the range, q = -Q_N / Q_P outside, so
        # sum(g * ds) = <g, q> - <g * 1{inside}, r>
        grad_step = (torch.dot(grad.reshape(-1), q.reshape(-1)) - torch.dot(grad_v.reshape(-1), r.reshape(-1)))
        return grad_v, (grad_step * ctx.grad_scale).reshape(step.shape), None, None, None


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_scale: float) -> torch.Tensor:
    """LSQ (Esser et al. 2020, Eq. 1-2): v_hat = round(clip(v / s, -Q_N, Q_P)) * s.

    The step's gradient is Eq. 3 (-v/s + round(v/s) inside the range, -Q_N / Q_P at the ends)
    times `grad_scale` (Sec. 2.2); v's gradient is 1 inside the range, 0 outside (STE through round).
    """
    return _LSQ.apply(v, step, q_n, q_p, grad_scale)


def lsq_codes(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    """Codes 0..Q_N+Q_P of `lsq_quantize` (value = (code - Q_N) * s)."""
    return (torch.round(torch.clamp(v / step, -q_n, q_p)) + q_n).to(torch.int32)


# ----------------------------------------------------------------------------- PACT
class _PACT(torch.autograd.Function):
    """PACT (Choi et al. 2018): y = clip(x, 0, alpha) (Eq. 1), y_q = round(y (2^k-1)/alpha) alpha/(2^k-1)
    (Eq. 2). Backward: dy_q/dx = 1 on [0, alpha) else 0 (STE); dy_q/dalpha = 1{x >= alpha} (Eq. 3)."""

    @staticmethod
    def forward(ctx, x, alpha, bits):
        ctx.save_for_backward(x, alpha)
        n = 2**bits - 1
        step = alpha / n
        return torch.minimum(torch.clamp(x, min=0.0), alpha).div_(step).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        grad_x = window_grad(grad, x, 0.0, float(alpha), include_high=False)
        grad_alpha = window_grad(grad, x, float(alpha), math.inf).sum().reshape(alpha.shape)  # over x >= alpha
        return grad_x, grad_alpha, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """k-bit PACT activation with learned clipping level `alpha` (a positive tensor of shape (1,))."""
    return _PACT.apply(x, alpha, bits)


def pact_codes(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes 0..2^k-1 of `pact_quantize` (value = code * alpha / (2^k - 1))."""
    n = 2**bits - 1
    return torch.minimum(torch.clamp(x, min=0.0), alpha).div_(alpha / n).round_().to(torch.int32)
