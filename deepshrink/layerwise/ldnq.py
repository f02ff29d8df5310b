"""L-DNQ: layer-wise deep network quantization by ADMM (Xu, Chen, Wang, Pan, AAAI 2019), and its baseline.

Weights are restricted to alpha * {0, ±1, ±2, ±4, ...}. `levels` counts LEVELS, not bits:
3 = {0, ±a} (ternary), 5 = {0, ±a, ±2a}, 7 = {0, ±a, ±2a, ±4a}, 9 adds ±8a, 11 adds ±16a.
(The reference README speaks of bits, its code of levels; here it is always the number of levels.)

Per layer the problem (eq. 4) is  min_W tr((W - W0) H (W - W0)^T)  s.t.  W in Omega,  with H the
layer Hessian X X^T / N. ADMM splits W = G, G in Omega (eq. 6-8, scaled dual U):

    W <- (2H + rho I)^-1 (2 H W0 + rho (G - U))      (closed form; H's eigenbasis is computed once)
    G <- Proj_Omega(W + U)                           (alternate: codes = nearest level of x / alpha,
                                                      alpha = <x, q> / <q, q>)
    U <- U + W - G,   rho <- rho * rho_growth

starting from round-to-nearest with the best alpha, keeping the best iterate G (by the true objective),
and finally re-fitting alpha through H for the best codes. So L-DNQ is never worse than its start.
Beyond the paper (on by default, `polish_sweeps: 0` for the paper's ADMM alone): coordinate-descent
sweeps over the codes for fixed alpha, each an exact 1-D minimiser of the same objective, alternated
with the alpha refit (ResNet-20, 3 levels, 1000 test images: drop 6.5 -> 4.5 points).

`sparsity > 0` first prunes with L-OBS (mode `prune_mode`) and keeps pruned weights at 0 (L-OBS +
L-DNQ: a "sparse" encoding with a "pow2" inner). `cascade_steps > 0` runs the cascade soft update
(Sec. 3.4): after each layer, the layers not yet quantized are fine-tuned for that many Adam steps to
match the original network's logits on the calibration data; it costs cascade_steps forward+backward
passes of the whole network per layer (about 2 s per 10 steps for ResNet-20 on 2 CPU cores).

Baseline `ldnq_rtn`: round-to-nearest onto the same levels with the best alpha, no Hessian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..nn import EncodedWeight
from ..registry import register_method
from . import hessian as hess
from .base import LayerSolution, LayerwiseConfig, LayerwiseMethod
from .distill import distill, outputs_of
from .lobs import check_sparsity, lowest_mask, prune_layer

LEVELS = (3, 5, 7, 9, 11)


def level_magnitudes(levels: int) -> torch.Tensor:
    """Non-negative magnitudes {0, 1, 2, 4, ...} of an L-level set: (L + 1) / 2 values."""
    half = (levels - 1) // 2
    return torch.tensor([0.0] + [2.0**i for i in range(half)], dtype=torch.float64)


def level_values(levels: int) -> torch.Tensor:
    """All L level values in units of alpha, sorted: e.g. 5 -> [-2, -1, 0, 1, 2]."""
    mags = level_magnitudes(levels)
    return torch.cat([-mags.flip(0)[:-1], mags])


def nearest_codes(scaled: torch.Tensor, levels: int) -> torch.Tensor:
    """Codes (pow2 convention: 0, ±1 -> ±a, ±2 -> ±2a, ±3 -> ±4a ...) of the level nearest to `scaled`."""
    mags = [0.0] + [2.0**i for i in range((levels - 1) // 2)]  # level_magnitudes(levels), as floats
    magnitude = scaled.abs()
    index = torch.zeros_like(scaled, dtype=torch.long)
    for low, high in zip(mags[:-1], mags[1:]):  # decision boundaries between consecutive magnitudes
        index += magnitude > (low + high) / 2
    return torch.sign(scaled).long() * index


_MAX_CODE = (max(LEVELS) - 1) // 2
# level value of code c at index c + _MAX_CODE: 0 -> 0, ±k -> ±2^(k-1)
_DECODE = torch.tensor([0.0 if c == 0 else math.copysign(2.0 ** (abs(c) - 1), c)
                        for c in range(-_MAX_CODE, _MAX_CODE + 1)], dtype=torch.float64)


def decode_codes(codes: torch.Tensor) -> torch.Tensor:
    """Level values (units of alpha) of pow2 codes (a table look-up: the loops call it per column)."""
    return _DECODE[codes.long() + _MAX_CODE]


def _reduce(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Sum over a layer's weights (G, R, D): per output channel -> (G, R, 1), else -> (1, 1, 1)."""
    return x.sum(dim=2, keepdim=True) if per_channel else x.sum().reshape(1, 1, 1)


def project(weight: torch.Tensor, levels: int, alpha: torch.Tensor, per_channel: bool,
            keep: torch.Tensor | None = None, rounds: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean projection onto alpha * levels by alternating codes and alpha; returns (codes, alpha)."""
    for _ in range(rounds):
        codes = nearest_codes(weight / alpha, levels)
        if keep is not None:
            codes = codes * keep
        q = decode_codes(codes)
        denom = _reduce(q * q, per_channel)
        alpha = torch.where(denom > 0, _reduce(q * weight, per_channel) / denom.clamp(min=1e-30), alpha)
    codes = nearest_codes(weight / alpha, levels)
    return (codes * keep if keep is not None else codes), alpha


def best_alpha_rtn(weight: torch.Tensor, levels: int, per_channel: bool, keep=None, grid: int = 64):
    """Round-to-nearest with the alpha minimising ||W - alpha q(W / alpha)||^2 (grid, then refined)."""
    top = float(level_magnitudes(levels)[-1])
    amax = _amax(weight, per_channel).clamp(min=1e-12)
    best_err, best = None, None
    for fraction in torch.linspace(0.02, 1.0, grid, dtype=torch.float64):
        alpha = amax * fraction / top
        codes, alpha = project(weight, levels, alpha, per_channel, keep, rounds=1)
        err = _reduce((weight - alpha * decode_codes(codes)) ** 2, per_channel)
        if best_err is None:
            best_err, best = err, (codes, alpha)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = (torch.where(better, codes, best[0]), torch.where(better, alpha, best[1]))
    return best


def _amax(weight, per_channel):
    return weight.abs().amax(dim=2, keepdim=True) if per_channel else weight.abs().max().reshape(1, 1, 1)


def fit_alpha(weight0, hessian, codes, alpha, per_channel):
    """alpha minimising tr((alpha Q - W0) H (alpha Q - W0)^T) for fixed codes: <Q, W0>_H / <Q, Q>_H."""
    q = decode_codes(codes)
    qh = q @ hessian  # (G, R, D)
    denom = _reduce(qh * q, per_channel)
    return torch.where(denom > 0, _reduce(qh * weight0, per_channel) / denom.clamp(min=1e-30), alpha)


def polish_codes(weight0, hessian, codes, alpha, levels: int, sweeps: int, keep=None, block: int = 128):
    """Coordinate descent on the codes for fixed alpha: each weight in turn moves to the level nearest to
    its unconstrained optimum given all others, which is the exact 1-D minimiser of the quadratic, so the
    objective never increases. (An addition to L-DNQ's ADMM; `polish_sweeps: 0` turns it off.)

    Columns are visited in blocks of `block`: a move updates the gradient of its own block at once and
    that of the other columns once per block, with one matrix product (the same sums, in another order;
    a layer of 4,608 columns moves ~37x less memory than updating every column after every move)."""
    q = alpha * decode_codes(codes)  # (G, R, D)
    residual = (q - weight0) @ hessian  # (G, R, D): gradient / 2 of the objective
    diag = torch.diagonal(hessian, dim1=-2, dim2=-1).clamp(min=1e-30)  # (G, D)
    codes = codes.clone()
    dim = weight0.shape[2]
    for _ in range(sweeps):
        for start in range(0, dim, block):
            stop = min(dim, start + block)
            moved = torch.zeros_like(q[:, :, start:stop])  # (G, R, B): this block's moves
            for j in range(start, stop):
                target = q[:, :, j] - residual[:, :, j] / diag[:, j:j + 1]  # (G, R)
                new_codes = nearest_codes(target / alpha[:, :, 0], levels)
                if keep is not None:
                    new_codes = new_codes * keep[:, :, j]
                new = alpha[:, :, 0] * decode_codes(new_codes)
                delta = new - q[:, :, j]  # (G, R)
                if bool(delta.any()):
                    residual[:, :, start:stop] += delta.unsqueeze(2) * hessian[:, j, start:stop].unsqueeze(1)
                    moved[:, :, j - start] = delta
                    q[:, :, j] = new
                    codes[:, :, j] = new_codes
            if bool(moved.any()):  # the other columns' gradient: (G, R, B) @ (G, B, D)
                update = moved @ hessian[:, start:stop]
                residual[:, :, :start] += update[:, :, :start]
                residual[:, :, stop:] += update[:, :, stop:]
    return codes


def admm_quantize(weight0: torch.Tensor, hessian: torch.Tensor, levels: int, per_channel: bool = True,
                  iterations: int = 40, rho: float = 0.05, rho_growth: float = 1.15, damp: float = 0.01,
                  keep: torch.Tensor | None = None, polish_sweeps: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """L-DNQ's ADMM on weight (G, R, D) with H (G, D, D); returns (codes, alpha, objective per iterate).

    The W-step and the objective are taken in H's eigenbasis H = V diag(lam) V^T: with X' = X V the
    W-step is W' = (2 H W0 + rho (G - U))' / (2 lam + rho) and the objective sum lam (G' - W0')^2, so
    an iterate costs two (R, D) x (D, D) products (W = W' V^T, G' = G V) instead of three (the third
    was G H for the objective). U is kept in both bases; the iterates are those of the plain form up
    to rounding."""
    hessian = hess.regularize(hessian, damp) if damp > 0 else hessian
    eigvals, eigvecs = torch.linalg.eigh(hessian)  # (G, D), (G, D, D)
    eigvals = eigvals.clamp(min=0).unsqueeze(1)  # (G, 1, D)
    scale = torch.diagonal(hessian, dim1=-2, dim2=-1).mean(dim=-1).reshape(-1, 1, 1)  # (G, 1, 1)
    weight0_rot = weight0 @ eigvecs  # (G, R, D)
    target_rot = 2 * eigvals * weight0_rot  # (2 H W0)' = 2 lam W0'

    def objective(codes, alpha):
        return hess.reconstruction_error(hessian, alpha * decode_codes(codes) - weight0).item()

    codes, alpha = best_alpha_rtn(weight0, levels, per_channel, keep)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    history = [objective(codes, alpha)]
    best = (history[0], codes, alpha)
    g = alpha * decode_codes(codes)
    g_rot = g @ eigvecs
    dual, dual_rot = torch.zeros_like(weight0), torch.zeros_like(weight0)
    penalty = rho * scale
    for _ in range(iterations):
        w_rot = (target_rot + penalty * (g_rot - dual_rot)) / (2 * eigvals + penalty)
        w = w_rot @ eigvecs.transpose(1, 2)
        codes, alpha = project(w + dual, levels, alpha, per_channel, keep)
        g = alpha * decode_codes(codes)
        g_rot = g @ eigvecs
        dual, dual_rot = dual + w - g, dual_rot + w_rot - g_rot
        penalty = penalty * rho_growth
        history.append((eigvals * (g_rot - weight0_rot) ** 2).sum().item())
        if history[-1] < best[0]:
            best = (history[-1], codes, alpha)
    _, codes, alpha = best
    for _ in range(2 if polish_sweeps else 1):  # polish codes, refit alpha through H, twice
        if polish_sweeps:
            codes = polish_codes(weight0, hessian, codes, alpha, levels, polish_sweeps, keep)
        refit = fit_alpha(weight0, hessian, codes, alpha, per_channel)
        if objective(codes, refit) <= objective(codes, alpha):
            alpha = refit
    history.append(objective(codes, alpha))
    return codes, alpha, history


def pow2_encoding(codes: torch.Tensor, alpha: torch.Tensor, levels: int, shape, keep=None) -> EncodedWeight:
    """EncodedWeight "pow2" (or "sparse" around it when `keep` is given) in the layer's shape."""
    per_layer = alpha.numel() == 1
    alpha_param = alpha.reshape(-1).float() if not per_layer else alpha.reshape(1).float()
    inner = EncodedWeight("pow2", shape, codes=codes.reshape(shape).to(torch.int8),
                          params={"alpha": alpha_param}, levels=levels)
    if keep is None:
        return inner
    return EncodedWeight("sparse", shape, mask=keep.reshape(shape).clone(), inner=inner)


@dataclass
class LDNQConfig(LayerwiseConfig):
    """levels: number of LEVELS in {3, 5, 7, 9, 11} (3 = {0, ±a}, 5 = {0, ±a, ±2a}, 7 adds ±4a).
    per_channel: one alpha per output channel (True) or one per layer (False, the paper).
    iterations / rho / rho_growth: ADMM budget and penalty (rho in units of mean diag H).
    sparsity, prune_mode: L-OBS pruning before quantization (0 = none).
    cascade_steps / cascade_lr: cascade soft update of the layers not yet quantized (0 = off).
    polish_sweeps: coordinate-descent sweeps over the codes after ADMM (0 = the paper's ADMM only)."""

    levels: int = 5
    per_channel: bool = True
    iterations: int = 40
    rho: float = 0.05
    rho_growth: float = 1.15
    sparsity: float = 0.0
    prune_mode: str = "exact"
    cascade_steps: int = 0
    cascade_lr: float = 1e-4
    polish_sweeps: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.polish_sweeps < 0:
            raise UserError(f"polish_sweeps must be >= 0, got {self.polish_sweeps}")
        if self.levels not in LEVELS:
            raise UserError(f"levels counts levels and must be one of {LEVELS} (3 = {{0, ±a}}), got {self.levels}")
        if self.iterations < 0 or self.rho <= 0 or self.rho_growth < 1:
            raise UserError("need iterations >= 0, rho > 0 and rho_growth >= 1 "
                            f"(got {self.iterations}, {self.rho}, {self.rho_growth})")
        check_sparsity(self.sparsity)
        if self.prune_mode not in ("one_shot", "exact"):
            raise UserError(f"prune_mode must be 'one_shot' or 'exact', got {self.prune_mode!r}")
        if self.cascade_steps < 0 or self.cascade_lr <= 0:
            raise UserError(f"cascade_steps must be >= 0 and cascade_lr > 0, got {self.cascade_steps}, {self.cascade_lr}")


@register_method("ldnq", LDNQConfig)
class LDNQ(LayerwiseMethod):
    """L-DNQ (Xu et al. 2019): ADMM onto power-of-two levels per layer; see the module docstring."""

    @property
    def needs_reference(self) -> bool:
        return any(cfg.cascade_steps > 0 for cfg in self.layer_configs.values())

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        keep = None
        if cfg.sparsity > 0:
            _, keep = prune_layer(weight, hessian, cfg.sparsity, cfg.prune_mode, self.config.damp)
        codes, alpha, history = admm_quantize(weight, hessian, cfg.levels, cfg.per_channel, cfg.iterations,
                                              cfg.rho, cfg.rho_growth, self.config.damp, keep, cfg.polish_sweeps)
        new = alpha * decode_codes(codes)
        return LayerSolution(new, pow2_encoding(codes, alpha, cfg.levels, layer.weight.shape, keep),
                             {"error_rtn": history[0], "error": history[-1]})

    def after_layer(self, model: nn.Module, name: str, batches) -> None:
        cfg = self.layer_configs[name]
        if cfg.cascade_steps <= 0:
            return
        if self._teacher_outputs is None:
            self._teacher_outputs = outputs_of(self.reference, batches)
        pending = [n for n in self.layer_configs if n not in self.encodings]
        params = [p for n in pending for p in model.get_submodule(n).parameters()]
        distill(model, batches, self._teacher_outputs, params, cfg.cascade_steps, cfg.cascade_lr, loss="mse")


@dataclass
class RTNConfig(LayerwiseConfig):
    """levels: number of LEVELS in {3, 5, 7, 9, 11}; per_channel: alpha per output channel; sparsity:
    magnitude pruning before rounding (the baseline of `ldnq` with sparsity)."""

    levels: int = 5
    per_channel: bool = True
    sparsity: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.levels not in LEVELS:
            raise UserError(f"levels counts levels and must be one of {LEVELS} (3 = {{0, ±a}}), got {self.levels}")
        check_sparsity(self.sparsity)


@register_method("ldnq_rtn", RTNConfig)
class LDNQRoundToNearest(LayerwiseMethod):
    """Baseline for L-DNQ: round-to-nearest onto alpha * {0, ±1, ±2, ±4, ...} with the best alpha."""

    needs_hessian = False

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        keep = None
        if cfg.sparsity > 0:
            keep = ~lowest_mask(weight.abs(), cfg.sparsity)
        codes, alpha = best_alpha_rtn(weight, cfg.levels, cfg.per_channel, keep)
        new = alpha * decode_codes(codes)
        return LayerSolution(new, pow2_encoding(codes, alpha, cfg.levels, layer.weight.shape, keep))
