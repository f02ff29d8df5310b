"""Refinements of a PQ solution against the FULL layer objective tr((W_hat - W) H (W_hat - W)^T).

The EM of pq_kmeans.py weighs each block by its own diagonal block of H and so ignores how blocks interact
through the off-diagonal blocks. Two exact steps on the full objective fix that:

- `refit_codebook`: for fixed codes W_hat is linear in the codebook, so the optimal codebook solves a
  least-squares problem (conjugate gradients, the gradient of a centroid being the sum of its blocks').
- `polish_assignments`: block by block, move to the centroid that lowers the full objective most given
  every other block (an exact coordinate step, so the objective never increases).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from ..nn import EncodedWeight


@contextlib.contextmanager
def deterministic_algorithms():
    """PyTorch's deterministic kernels inside the block (the CPU backward of indexing adds in thread
    order by default: two runs of PQ gave codebooks a few ulps apart, and so different codes)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def refit_codebook(encoded: EncodedWeight, weight: torch.Tensor, hessian: torch.Tensor, iterations: int = 30):
    """Codebook minimising the full layer objective tr((W_hat - W) H (W_hat - W)^T) for fixed codes.

    W_hat is linear in the codebook, so this is a least-squares problem solved by conjugate gradients;
    unlike the EM's block-diagonal metric it keeps the cross-block terms of H.
    """
    groups = hessian.shape[0]
    codebook = encoded.params["codebook"].to(torch.float64)

    def decode(book):  # (G, R, D) weight of a codebook
        enc = dataclasses.replace(encoded, params={"codebook": book})
        return enc.dequantize().to(torch.float64).reshape(groups, -1, hessian.shape[-1])

    def gradient_of(residual):  # adjoint of decode applied to residual @ H: summed per centroid
        book = codebook.clone().requires_grad_(True)
        with deterministic_algorithms():  # the gather's backward sums in thread order otherwise
            (decode(book) * (residual @ hessian)).sum().backward()
        return book.grad

    target = weight.to(torch.float64).reshape(groups, -1, hessian.shape[-1])
    rhs = gradient_of(target)
    x = codebook.clone()
    r = rhs - gradient_of(decode(x))
    p = r.clone()
    rs = (r * r).sum()
    for _ in range(iterations):
        if rs <= 1e-30:
            break
        ap = gradient_of(decode(p))
        step = rs / (p * ap).sum().clamp(min=1e-30)
        x, r = x + step * p, r - step * ap
        rs_new = (r * r).sum()
        p, rs = r + (rs_new / rs) * p, rs_new
    return dataclasses.replace(encoded, params={"codebook": x.float()})


def block_columns(encoded: EncodedWeight, dim: int) -> torch.Tensor:
    """(n_blocks, d) indices, in the weight's (c, kh, kw) column order, of each block position."""
    shape = encoded.shape
    block_size = encoded.params["codebook"].shape[2]
    if encoded.layout == "channel" and len(shape) == 4:
        cin = dim // (shape[2] * shape[3])
        order = torch.arange(dim).reshape(cin, shape[2], shape[3]).permute(1, 2, 0).reshape(-1)
    else:
        order = torch.arange(dim)
    return order.reshape(-1, block_size)


def polish_assignments(encoded: EncodedWeight, weight: torch.Tensor, hessian: torch.Tensor, sweeps: int = 1):
    """Coordinate descent on the PQ codes under the full H; weight (G, R, D), H (G, D, D)."""
    groups, rows, dim = weight.shape
    codebook = encoded.params["codebook"].to(torch.float64)  # (S, K, d)
    codes = encoded.codes.long().clone()  # (out, n_blocks)
    n_blocks = codes.shape[1]
    columns = block_columns(encoded, dim)  # (n_blocks, d)
    approx = encoded.dequantize().to(torch.float64).reshape(groups, rows, dim)
    residual = (approx - weight) @ hessian  # (G, R, D)
    for _ in range(sweeps):
        for j in range(n_blocks):
            idx = columns[j]
            book = codebook[j // (n_blocks // codebook.shape[0])]  # (K, d)
            h_jj = hessian[:, idx][:, :, idx]  # (G, d, d)
            current = approx[:, :, idx]  # (G, R, d)
            hc = book @ h_jj  # (G, K, d)
            change = (2 * residual[:, :, idx] @ book.T  # (G, R, K): linear term
                      + (hc * book).sum(-1).unsqueeze(1) - 2 * current @ hc.transpose(1, 2))
            stay = (2 * residual[:, :, idx] * current).sum(-1) - (current @ h_jj * current).sum(-1)  # (G, R)
            best = (change - stay.unsqueeze(2)).argmin(dim=2)  # (G, R)
            new = book[best]  # (G, R, d)
            delta = new - current
            if bool(delta.any()):
                residual += delta @ hessian[:, idx, :]
                approx[:, :, idx] = new
                codes[:, j] = best.reshape(-1)
    return dataclasses.replace(encoded, codes=codes.to(encoded.codes.dtype))
