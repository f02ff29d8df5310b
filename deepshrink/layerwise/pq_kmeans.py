"""Activation-weighted k-means of weight sub-vectors (Stock et al., "And the bit goes down", ICLR 2020).

A layer's weight is cut into blocks v (out, n_blocks, d) (`deepshrink.nn.pq_blocks`). Stock et al. (eq. 3)
quantize to minimise the output error ||x (w - c)||^2 rather than ||w - c||^2. With H = X X^T / N and
H_j the (d, d) diagonal block of H that multiplies block position j (cross-block terms dropped), the
objective is

    sum_{o, j} (v_oj - c_{k(o,j)})^T H_j (v_oj - c_{k(o,j)})

E-step (eq. 4): k(o, j) = argmin_k (v_oj - c_k)^T H_j (v_oj - c_k).
M-step (eq. 5, through H instead of a pseudo-inverse of a huge X):
    c_k = (sum_{(o,j) in k} H_j)^-1 (sum_{(o,j) in k} H_j v_oj).
Both steps are exact minimisers, so the objective never increases. An empty cluster is re-seeded next to
the centroid of the largest cluster (the old centroids stay, so the next E-step cannot do worse).
With H_j = I this is plain k-means (the `kmeans` baseline).
"""
from __future__ import annotations

import torch


def weighted_objective(vectors, weights, codes, centroids) -> float:
    """sum (v - c)^T H (v - c); vectors (N, d), weights (N, d, d) or None (identity), codes (N,)."""
    diff = vectors - centroids[codes]  # (N, d)
    if weights is None:
        return float((diff * diff).sum())
    return float(torch.einsum("nd,nde,ne->", diff, weights, diff))


def e_step(vectors, weights, centroids, chunk: int = 2**22) -> torch.Tensor:
    """Nearest centroid of each vector under its own metric H_n: codes (N,)."""
    n, d = vectors.shape
    k = centroids.shape[0]
    codes = torch.empty(n, dtype=torch.long)
    step = max(1, chunk // (k * d))
    for start in range(0, n, step):
        v = vectors[start:start + step]  # (n', d)
        if weights is None:
            dist = torch.cdist(v, centroids) ** 2  # (n', K)
        else:
            h = weights[start:start + step]  # (n', d, d)
            hc = torch.einsum("nde,ke->nkd", h, centroids)  # (n', K, d): H_n c_k
            dist = torch.einsum("kd,nkd->nk", centroids, hc) - 2 * torch.einsum("nd,nkd->nk", v, hc)
        codes[start:start + step] = dist.argmin(dim=1)
    return codes


def m_step(vectors, weights, codes, centroids) -> torch.Tensor:
    """Weighted means c_k = (sum H_n)^-1 sum H_n v_n over each cluster; empty clusters keep c_k."""
    k, d = centroids.shape
    counts = torch.bincount(codes, minlength=k)
    if weights is None:
        sums = torch.zeros(k, d, dtype=vectors.dtype).index_add_(0, codes, vectors)
        new = sums / counts.clamp(min=1).unsqueeze(1)
    else:
        lhs = torch.zeros(k, d, d, dtype=vectors.dtype).index_add_(0, codes, weights)  # (K, d, d)
        rhs = torch.zeros(k, d, dtype=vectors.dtype).index_add_(
            0, codes, torch.einsum("nde,ne->nd", weights, vectors))  # (K, d)
        filled = counts > 0
        new = centroids.clone()
        # gelsd (SVD): LAPACK's default gelsy gives run-to-run different bits on the same input here
        solved = torch.linalg.lstsq(lhs[filled], rhs[filled].unsqueeze(2), driver="gelsd").solution.squeeze(2)
        new[filled] = solved
    return torch.where((counts > 0).unsqueeze(1), new, centroids)


def split_empty(vectors, codes, centroids, generator) -> torch.Tensor:
    """Re-seed each empty centroid next to the centroid of the currently largest cluster."""
    k = centroids.shape[0]
    counts = torch.bincount(codes, minlength=k)
    centroids = centroids.clone()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(counts.argmax())
        members = vectors[codes == largest]
        scale = members.std(dim=0, unbiased=False).clamp(min=1e-8) if len(members) > 1 else vectors.std(0)
        noise = torch.randn(centroids.shape[1], generator=generator, dtype=vectors.dtype) * 1e-2 * scale
        centroids[empty] = centroids[largest] + noise
        counts[largest] = counts[largest] // 2  # the next split takes another cluster if this one halves
        counts[empty] = counts[largest]
    return centroids


def weighted_kmeans(vectors, weights, n_centroids: int, iterations: int = 20, seed: int = 0):
    """Activation-weighted k-means; returns (centroids (K, d), codes (N,), objective after each E-step).

    vectors (N, d); weights (N, d, d) per-vector metrics H_n, or None for plain k-means.
    """
    generator = torch.Generator().manual_seed(seed)
    n = vectors.shape[0]
    n_centroids = min(n_centroids, n)
    centroids = vectors[torch.randperm(n, generator=generator)[:n_centroids]].clone()
    codes = e_step(vectors, weights, centroids)
    history = [weighted_objective(vectors, weights, codes, centroids)]
    for _ in range(iterations):
        centroids = m_step(vectors, weights, codes, centroids)
        history.append(weighted_objective(vectors, weights, codes, centroids))
        centroids = split_empty(vectors, codes, centroids, generator)
        new_codes = e_step(vectors, weights, centroids)
        history.append(weighted_objective(vectors, weights, new_codes, centroids))
        if torch.equal(new_codes, codes) and history[-1] >= history[-3]:
            codes = new_codes
            break
        codes = new_codes
    return centroids, codes, history
