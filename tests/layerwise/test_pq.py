"""PQ: the activation-weighted EM never increases its objective, steps match closed forms, encodings decode."""
import dataclasses
import pytest
import torch
from torch import nn

from deepshrink.layerwise.pq import KMeansConfig, PQConfig, block_metrics, block_size_for, quantize_layer
from deepshrink.layerwise.pq_kmeans import m_step, weighted_kmeans, weighted_objective
from deepshrink.errors import UserError


def _metrics(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    return a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)


def test_weighted_objective_never_increases_across_em_steps():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(300, 4, generator=g, dtype=torch.float64)
    centroids, codes, history = weighted_kmeans(vectors, _metrics(300, 4), 16, iterations=15)
    assert all(b <= a + 1e-9 for a, b in zip(history, history[1:]))
    assert history[-1] < history[0]
    assert history[-1] == pytest.approx(weighted_objective(vectors, _metrics(300, 4), codes, centroids))


def test_m_step_is_the_weighted_least_squares_centroid():
    vectors = torch.randn(10, 3, dtype=torch.float64)
    metrics = _metrics(10, 3, seed=1)
    codes = torch.tensor([0] * 6 + [1] * 4)
    new = m_step(vectors, metrics, codes, torch.zeros(2, 3, dtype=torch.float64))
    for k, members in ((0, slice(0, 6)), (1, slice(6, 10))):
        lhs = metrics[members].sum(0)
        rhs = torch.einsum("nde,ne->d", metrics[members], vectors[members])
        torch.testing.assert_close(new[k], torch.linalg.solve(lhs, rhs))
        # and no small move of the centroid lowers that cluster's objective
        for _ in range(5):
            moved = new.clone()
            moved[k] += 1e-3 * torch.randn(3, dtype=torch.float64)
            assert weighted_objective(vectors, metrics, codes, moved) >= weighted_objective(vectors, metrics, codes, new)


def test_identity_metric_is_plain_kmeans_and_empty_clusters_get_reseeded():
    vectors = torch.cat([torch.zeros(50, 2), torch.ones(50, 2) * 5]).double()
    vectors += 0.01 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    centroids, codes, _ = weighted_kmeans(vectors, None, 4, iterations=10)
    assert torch.bincount(codes, minlength=4).min() > 0  # no dead centroid
    centroids_w, codes_w, _ = weighted_kmeans(vectors, torch.eye(2, dtype=torch.float64).expand(100, 2, 2), 4, 10)
    torch.testing.assert_close(centroids, centroids_w)


@pytest.mark.parametrize("layout", ["row", "channel"])
@pytest.mark.parametrize("n_subspaces", [1, 2])
def test_encoding_shapes_clamped_centroids_and_block_sizes(layout, n_subspaces):
    conv = nn.Conv2d(8, 4, 3, bias=False)
    cfg = KMeansConfig(n_centroids=1000, layout=layout, n_subspaces=n_subspaces, iterations=3)
    encoded, _ = quantize_layer(conv, None, cfg, damp=0.01)
    n_blocks = 8 * 9 // 9
    assert encoded.codes.shape == (4, n_blocks)
    assert encoded.params["codebook"].shape == (n_subspaces, 4 * n_blocks // n_subspaces, 9)  # K clamped
    # with every block its own centroid the weight is reproduced, up to the centroids' float16 rounding
    torch.testing.assert_close(encoded.dequantize(), conv.weight.detach().half().float(), rtol=1e-5, atol=1e-6)
    book = encoded.params["codebook"]
    assert torch.equal(book.half().float(), book)  # stored exactly in 16 bits, and counted so
    assert encoded.packed_bits() == encoded.bits * encoded.codes.numel() + 16 * book.numel()
    exact, _ = quantize_layer(conv, None, dataclasses.replace(cfg, codebook_fp16=False), damp=0.01)
    torch.testing.assert_close(exact.dequantize(), conv.weight.detach(), rtol=1e-5, atol=1e-6)
    assert block_size_for(nn.Conv2d(6, 4, 1), cfg) == 3  # 4 does not divide 6 -> largest divisor
    assert block_size_for(nn.Linear(12, 3), cfg) == 4


def test_block_metrics_are_the_diagonal_blocks_in_block_order():
    x = torch.randn(500, 2 * 2 * 2, dtype=torch.float64)  # conv (out=3, in=2, 2, 2): D = 8
    h = (x.T @ x / 500).unsqueeze(0)
    row = block_metrics(h, (3, 2, 2, 2), 4, "row", 3)
    torch.testing.assert_close(row[0, 1], h[0, 4:, 4:])
    channel = block_metrics(h, (3, 2, 2, 2), 2, "channel", 3)  # block j = both channels at kernel pos j
    idx = torch.tensor([0, 4])  # (c=0, pos 0), (c=1, pos 0) in the (c, kh, kw) column order
    torch.testing.assert_close(channel[0, 0], h[0][idx][:, idx])


def test_config_validation():
    with pytest.raises(UserError, match="layout"):
        PQConfig(layout="diagonal")
    with pytest.raises(UserError, match="n_centroids"):
        KMeansConfig(n_centroids=1)


def test_codebook_refit_reaches_the_full_hessian_least_squares_optimum():
    from deepshrink.layerwise.hessian import reconstruction_error
    from deepshrink.layerwise.pq_refine import refit_codebook

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2, bias=False)  # D = 8, blocks of 4 -> 2 blocks per row
    x = torch.randn(400, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    h = (x.T @ x / 400).unsqueeze(0)
    encoded, _ = quantize_layer(conv, h, KMeansConfig(n_centroids=2, block_conv3x3=4, iterations=5), damp=0.0)
    w = conv.weight.detach().double().reshape(1, 3, 8)
    refit = refit_codebook(encoded, w, h, iterations=50)
    # independent answer: W_hat = P c is linear in the flattened codebook c; solve the normal equations
    book = encoded.params["codebook"].double()
    columns = []
    for i in range(book.numel()):
        unit = torch.zeros(book.numel(), dtype=torch.float64)
        unit[i] = 1
        e = type(encoded)(**{**encoded.__dict__, "params": {"codebook": unit.reshape(book.shape)}})
        columns.append(e.dequantize().double().reshape(3, 8))
    basis = torch.stack(columns)  # (n, 3, 8)
    gram = torch.einsum("ird,de,jre->ij", basis, h[0], basis)
    rhs = torch.einsum("ird,de,re->i", basis, h[0], w[0])
    best = torch.linalg.lstsq(gram, rhs.unsqueeze(1)).solution.squeeze(1)
    best_w = torch.einsum("i,ird->rd", best, basis).reshape(1, 3, 8)
    err = reconstruction_error(h, refit.dequantize().double().reshape(1, 3, 8) - w).item()
    assert err == pytest.approx(reconstruction_error(h, best_w - w).item(), rel=1e-4)
    assert err <= reconstruction_error(h, encoded.dequantize().double().reshape(1, 3, 8) - w).item()


@pytest.mark.parametrize("layout", ["row", "channel"])
def test_assignment_polish_never_increases_the_full_objective(layout):
    from deepshrink.layerwise.hessian import reconstruction_error
    from deepshrink.layerwise.pq_refine import polish_assignments

    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, bias=False)  # D = 36
    x = torch.randn(500, 36, dtype=torch.float64) @ torch.randn(36, 36, dtype=torch.float64)
    h = (x.T @ x / 500).unsqueeze(0)
    w = conv.weight.detach().double().reshape(1, 6, 36)
    cfg = KMeansConfig(n_centroids=4, block_conv3x3=4, layout=layout, n_subspaces=3, iterations=5)
    encoded, _ = quantize_layer(conv, h, cfg, damp=0.0)
    polished = polish_assignments(encoded, w, h, sweeps=2)

    def err(e):
        return reconstruction_error(h, e.dequantize().double().reshape(1, 6, 36) - w).item()

    assert err(polished) < err(encoded)


def test_pq_gives_the_same_bits_on_every_run():
    # the codebook refit's backward and the M-step's least squares summed in thread order: two runs
    # of the same PQ compression gave different codes (and a different demo row)
    from deepshrink.layerwise.pq_refine import polish_assignments, refit_codebook

    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, bias=False)  # D = 576, 128 rows of 64 blocks of 9
    x = torch.randn(1000, 576, dtype=torch.float64)
    h = (x.T @ x / 1000).unsqueeze(0)
    w = conv.weight.detach().double().reshape(1, 128, 576)
    runs = []
    for _ in range(3):
        encoded, _ = quantize_layer(conv, h, KMeansConfig(n_centroids=64, iterations=4), damp=0.01)
        refit = refit_codebook(polish_assignments(refit_codebook(encoded, w, h), w, h), w, h)
        runs.append((encoded.codes, encoded.params["codebook"], refit.codes, refit.params["codebook"]))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))
