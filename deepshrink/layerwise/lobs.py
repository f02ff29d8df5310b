"""L-OBS: layer-wise Optimal Brain Surgeon pruning (Dong, Chen, Pan, NIPS 2017), and magnitude pruning.

Per layer, with H = X X^T / N the Hessian of the layer's reconstruction error (eq. 5, the same for every
row of W), removing weight q of a row costs (eq. 7)

    L_q = w_q^2 / (2 [H^-1]_qq)

and the other weights of the row compensate with (eq. 6)

    delta w = -(w_q / [H^-1]_qq) H^-1[:, q].

`mode="one_shot"` (the paper): rank every weight by L_q once, remove the lowest `sparsity` fraction and
apply the sum of their compensations. `mode="exact"` (Frantar & Alistarh, "Optimal Brain Compression",
NeurIPS 2022, Alg. 1): within each row remove one weight at a time, each time choosing the cheapest
remaining weight and downdating H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq, vectorised over rows;
each row removes as many weights as the one-shot ranking assigned to it. `scope="global"` ranks the
saliencies of every selected layer together (Hessians of the original network) to set per-layer sparsity.

Example::

    deepshrink.compress(model, {"method": "lobs", "params": {"sparsity": 0.7, "mode": "exact"}},
                        calib_data=calib)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..nn import EncodedWeight
from ..registry import register_method
from . import hessian as hess
from .capture import weight_matrix
from .base import LayerSolution, LayerwiseConfig, LayerwiseMethod


@dataclass
class LOBSConfig(LayerwiseConfig):
    """sparsity: fraction of weights removed, in [0, 1). mode: "one_shot" | "exact".
    scope: "layer" (each layer at `sparsity`) | "global" (one saliency threshold over all layers)."""

    sparsity: float = 0.5
    mode: str = "exact"
    scope: str = "layer"

    def __post_init__(self):
        super().__post_init__()
        check_sparsity(self.sparsity)
        if self.mode not in ("one_shot", "exact"):
            raise UserError(f"mode must be 'one_shot' or 'exact', got {self.mode!r}")
        if self.scope not in ("layer", "global"):
            raise UserError(f"scope must be 'layer' or 'global', got {self.scope!r}")


def check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise UserError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {sparsity}")


def lowest_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the round(fraction * numel) lowest scores (ties broken by position)."""
    count = int(round(fraction * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count:
        mask[torch.argsort(scores.reshape(-1), stable=True)[:count]] = True
    return mask.reshape(scores.shape)


def obs_saliency(weight: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
    """L_q = w_q^2 / (2 [H^-1]_qq) for weight (G, R, D) and H^-1 (G, D, D) (eq. 7)."""
    diag = torch.diagonal(hinv, dim1=-2, dim2=-1).unsqueeze(1)  # (G, 1, D)
    return weight**2 / (2 * diag)


def obs_one_shot(weight: torch.Tensor, hinv: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Remove `removed` (bool, like weight) and add the sum of the single-removal compensations (eq. 6)."""
    diag = torch.diagonal(hinv, dim1=-2, dim2=-1).unsqueeze(1)  # (G, 1, D)
    scaled = torch.where(removed, weight / diag, torch.zeros_like(weight))  # w_q / [H^-1]_qq
    new = weight - scaled @ hinv  # row r: sum_q scaled_rq H^-1[q, :]  (H^-1 symmetric)
    return new.masked_fill(removed, 0.0)


def obs_exact(weight: torch.Tensor, hinv: torch.Tensor, counts: torch.Tensor,
              max_elements: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """OBC greedy removal: row r of weight (R, D) loses counts[r] weights one at a time, H^-1 downdated.

    Returns (new weight, removed mask). Rows are processed in chunks of about max_elements / (k D).
    """
    rows, dim = weight.shape
    new = weight.clone()
    removed = torch.zeros_like(weight, dtype=torch.bool)
    chunk = max(1, max_elements // (dim * max(1, int(counts.max()))))
    for start in range(0, rows, chunk):  # float32 inside: the loop is memory-bound
        stop = min(rows, start + chunk)
        rows_new, removed[start:stop] = _obs_exact_rows(weight[start:stop].float(), hinv.float(), counts[start:stop])
        new[start:stop] = rows_new.to(new.dtype)
    return new, removed


def _obs_exact_rows(weight, hinv, counts):
    """Greedy OBS on rows (B, D) sharing the initial H^-1 (D, D).

    The downdated inverse after removing pivots p_1..p_s is H^-1 - sum_i l_i l_i^T with
    l_i = (current H^-1)[:, p_i] / sqrt((current H^-1)_{p_i p_i}) (a pivoted Cholesky of H^-1), so each
    row keeps its factors (B, s, D) instead of a (D, D) copy: O(s D) per step, not O(D^2).
    """
    batch, dim = weight.shape
    steps = int(counts.max()) if batch else 0
    w = weight.clone()
    diag = torch.diagonal(hinv).expand(batch, dim).clone()  # (B, D) current diag of H^-1
    factors = w.new_zeros(batch, max(steps, 1), dim)  # (B, S, D)
    removed = torch.zeros_like(w, dtype=torch.bool)
    rows = torch.arange(batch)
    for step in range(steps):
        active = counts > step  # (B,)
        score = (w**2 / diag.clamp(min=1e-20)).masked_fill(removed, float("inf"))
        q = score.argmin(dim=1)  # (B,)
        coef = factors[rows, :step, q]  # (B, s): l_i[q]
        column = hinv[q] - torch.einsum("bs,bsd->bd", coef, factors[:, :step])  # (B, D) current H^-1[:, q]
        pivot = column[rows, q].clamp(min=1e-20).unsqueeze(1)  # (B, 1)
        gate = active.to(w.dtype).unsqueeze(1)
        w -= gate * (w[rows, q].unsqueeze(1) / pivot) * column
        factor = gate * column / pivot.sqrt()
        factors[:, step] = factor
        diag -= factor**2
        w[rows[active], q[active]] = 0.0
        removed[rows[active], q[active]] = True
    return w.masked_fill(removed, 0.0), removed  # removed weights stay 0 despite float32 round-off


def sparse_float(weight: torch.Tensor, keep: torch.Tensor, shape) -> EncodedWeight:
    """EncodedWeight kind "sparse" over float values (pruned, not quantized)."""
    values = (weight * keep).reshape(shape).float()
    return EncodedWeight("sparse", shape, mask=keep.reshape(shape).clone(),
                         inner=EncodedWeight("float", shape, params={"values": values}))


def prune_layer(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, mode: str,
                damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L-OBS on one layer's weight (G, R, D) with H (G, D, D): (new weight, keep mask)."""
    hinv = hess.inverse(hessian, damp)
    removed = lowest_mask(obs_saliency(weight, hinv), sparsity)
    if mode == "one_shot":
        new = obs_one_shot(weight, hinv, removed)
    else:
        new = torch.empty_like(weight)
        for g in range(weight.shape[0]):
            new[g], removed[g] = obs_exact(weight[g], hinv[g], removed[g].sum(dim=1))
    return new, ~removed


@register_method("lobs", LOBSConfig)
class LOBS(LayerwiseMethod):
    """L-OBS pruning (Dong et al. 2017), one-shot or exact (OBC); see the module docstring."""

    def __init__(self, recipe, layers):
        super().__init__(recipe, layers)
        self.sparsity = {name: cfg.sparsity for name, cfg in self.layer_configs.items()}  # global scope: prepare sets it

    def prepare(self, model: nn.Module, batches) -> nn.Module:
        if self.config.scope == "global":
            scores = {}
            for name in self.layer_configs:
                layer = model.get_submodule(name)
                hessian = self.layer_hessian(model, name, layer, batches)
                if layer.bias is not None:
                    hessian, _ = hess.schur_free(hessian, 1, self.config.damp)
                weight = weight_matrix(layer).to(torch.float64)
                scores[name] = obs_saliency(weight, hess.inverse(hessian, self.config.damp)).reshape(-1)
            self.sparsity = global_sparsity(scores, self.config.sparsity)
        return model

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        sparsity = self.sparsity[name]
        new, keep = prune_layer(weight, hessian, sparsity, cfg.mode, self.config.damp)
        return LayerSolution(new, sparse_float(new, keep, layer.weight.shape),
                             {"sparsity": 1 - keep.float().mean().item(),
                              "error": hess.reconstruction_error(hessian, new - weight).item()})


def global_sparsity(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per-layer sparsity from one threshold on the concatenated scores of every layer."""
    everything = torch.cat(list(scores.values()))
    removed = lowest_mask(everything, sparsity)
    result, offset = {}, 0
    for name, layer_scores in scores.items():
        result[name] = removed[offset:offset + layer_scores.numel()].float().mean().item()
        offset += layer_scores.numel()
    return result


@dataclass
class MagnitudeConfig(LayerwiseConfig):
    """sparsity: fraction of weights with the smallest |w| removed; scope: "layer" | "global"."""

    sparsity: float = 0.5
    scope: str = "layer"

    def __post_init__(self):
        super().__post_init__()
        check_sparsity(self.sparsity)
        if self.scope not in ("layer", "global"):
            raise UserError(f"scope must be 'layer' or 'global', got {self.scope!r}")


@register_method("magnitude", MagnitudeConfig)
class Magnitude(LayerwiseMethod):
    """Baseline for L-OBS: remove the smallest |w| (no compensation), same sparsity, same driver."""

    def __init__(self, recipe, layers):
        super().__init__(recipe, layers)
        self.sparsity = {name: cfg.sparsity for name, cfg in self.layer_configs.items()}  # global scope: prepare sets it

    needs_hessian = False

    def prepare(self, model, batches):
        if self.config.scope == "global":
            scores = {n: model.get_submodule(n).weight.detach().abs().reshape(-1) for n in self.layer_configs}
            self.sparsity = global_sparsity(scores, self.config.sparsity)
        return model

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        keep = ~lowest_mask(weight.abs(), self.sparsity[name])
        new = weight * keep
        return LayerSolution(new, sparse_float(new, keep, layer.weight.shape),
                             {"sparsity": 1 - keep.float().mean().item()})
