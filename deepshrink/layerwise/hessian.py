"""Layer Hessians H = X X^T / N of the reconstruction error ||X^T (W - W_hat)||^2, and their inverses.

For a layer y = W x (+ b), the layer-wise loss of Dong et al. (L-OBS, NIPS 2017, eq. 2) is
E = 1/(2N) sum_n ||(W_hat - W) x_n||^2 whose Hessian with respect to each row of W is
H = (1/N) sum_n x_n x_n^T (eq. 5): the same for every row. A bias is handled by appending 1 to x.
H is summed in float64, chunk by chunk, and divided by the number of SAMPLES (patches), never by
the number of batches (a known slip of the reference code that scales H by the batch size).

Numerics (no NaN, ever): dead inputs (a zero diagonal entry, e.g. a dead ReLU channel) get a unit
diagonal, damping adds `damp * mean(diag H)` to the diagonal, and Cholesky failures retry with
10x more damping before falling back to an eigen-decomposition with clamped eigenvalues.
"""
from __future__ import annotations

import warnings

import torch

from ..engine import distributed
from ..errors import UserError


class HessianAccumulator:
    """Running sum of x x^T over input columns, per conv group: `add(cols)`, then `hessian()`.

    `max_samples` bounds the columns taken from one `add` call (uniform random subset, seeded), which
    keeps ResNet-18 at 224x224 (3136 patches per image in layer1) within a few GiB. `start_batch(i)`
    reseeds that draw from (seed, i), so the columns kept from calibration batch i do not depend on
    which batches came before it: ranks that each capture a shard of the batches and `all_reduce` their
    sums build the Hessian one process builds, up to summation order.

    Example::

        acc = HessianAccumulator(groups=1, dim=9, bias=True)
        acc.add(torch.randn(1, 100, 9))
        H = acc.hessian()      # (1, 10, 10) float64
    """

    def __init__(self, groups: int, dim: int, bias: bool = False, max_samples: int | None = None, seed: int = 0):
        self.bias = bias
        self.max_samples = max_samples
        size = dim + int(bias)
        self.sum = torch.zeros(groups, size, size, dtype=torch.float64)  # (G, D', D')
        self.count = 0
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def start_batch(self, index: int) -> None:
        """The columns of calibration batch `index` follow: draw their `max_samples` subset from (seed, index)."""
        self._generator.manual_seed(self.seed * 1_000_003 + index)

    def add(self, cols: torch.Tensor) -> None:
        """Accumulate columns (G, N, D)."""
        n = cols.shape[1]
        if self.max_samples is not None and n > self.max_samples:
            keep = torch.randperm(n, generator=self._generator)[: self.max_samples]
            cols = cols[:, keep]
            n = self.max_samples
        cols = cols.to(torch.float64)
        if self.bias:
            cols = torch.cat([cols, cols.new_ones(cols.shape[0], n, 1)], dim=2)  # (G, N, D+1)
        self.sum += cols.transpose(1, 2) @ cols
        self.count += n

    def all_reduce(self) -> None:
        """Add the sums and counts of every rank (under torchrun; a no-op in one process)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        distributed.all_reduce_sum(self.sum, count)
        self.count = int(count)

    def hessian(self, layer: str = "the layer") -> torch.Tensor:
        """H = X X^T / N, (G, D', D') float64; `layer` names the layer in the error when no input came."""
        if self.count == 0:
            raise UserError(f"no input reached {layer} during calibration: is it used in the forward pass?")
        return self.sum / self.count


def regularize(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """H with dead inputs given a unit diagonal and `damp * mean(diag)` added to the diagonal."""
    hessian = hessian.clone()
    diag = torch.diagonal(hessian, dim1=-2, dim2=-1)  # (G, D) view
    dead = diag <= 0
    diag[dead] = 1.0
    mean = diag.mean(dim=-1, keepdim=True)  # (G, 1)
    diag += damp * mean
    return hessian


def inverse(hessian: torch.Tensor, damp: float = 0.01, retries: int = 4) -> torch.Tensor:
    """(H + damp * mean(diag H) I)^-1 through Cholesky; more damping, then eigh, if H is not PD."""
    for attempt in range(retries + 1):
        regular = regularize(hessian, damp * 10**attempt if damp > 0 else 1e-8 * 10**attempt)
        chol, info = torch.linalg.cholesky_ex(regular)
        if int(info.max()) == 0:
            result = torch.cholesky_inverse(chol)
            if torch.isfinite(result).all():
                return result
    warnings.warn("Hessian not positive definite even with damping; using clamped eigenvalues", stacklevel=2)
    values, vectors = torch.linalg.eigh(regularize(hessian, damp))
    floor = values.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) * 1e-8
    values = values.clamp(min=floor)
    return (vectors / values.unsqueeze(-2)) @ vectors.transpose(-1, -2)


def schur_free(hessian: torch.Tensor, n_free: int, damp: float = 0.01):
    """Split off the last `n_free` unconstrained coordinates (the bias column).

    Minimising over the free coordinates leaves the constrained block with the Schur complement
    S = H_cc - H_cf H_ff^-1 H_fc, and an optimal free update delta_f = -H_ff^-1 H_fc delta_c.
    Returns (S, K) with K = H_ff^-1 H_fc, shape (G, n_free, D_c).
    """
    if n_free == 0:
        return hessian, None
    h_cc = hessian[:, :-n_free, :-n_free]
    h_cf = hessian[:, :-n_free, -n_free:]
    h_ff = hessian[:, -n_free:, -n_free:]
    gain = torch.linalg.solve(regularize(h_ff, damp), h_cf.transpose(1, 2))  # (G, F, Dc)
    return h_cc - h_cf @ gain, gain


def reconstruction_error(hessian: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """sum over rows of delta_r^T H delta_r = ||X^T delta^T||^2 / N, for delta (G, R, D), H (G, D, D)."""
    return ((delta @ hessian.to(delta.dtype)) * delta).sum()  # (G, R, D): one BLAS product, 2x einsum's speed
