"""L-OBS against the OBS closed form and a brute-force reference; exact (OBC) vs one-shot; magnitude."""
import pytest
import torch

from deepshrink.errors import UserError
from deepshrink.layerwise.hessian import reconstruction_error
from deepshrink.layerwise.lobs import (LOBSConfig, global_sparsity, lowest_mask, obs_exact, obs_one_shot,
                                       obs_saliency, prune_layer)


def _hessian(dim, samples=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return x.T @ x / samples


def test_single_removal_matches_the_constrained_least_squares_optimum():
    h = _hessian(6)
    hinv = torch.linalg.inv(h)
    w = torch.randn(1, 1, 6, dtype=torch.float64)
    q = 2
    removed = torch.zeros_like(w, dtype=torch.bool)
    removed[0, 0, q] = True
    new = obs_one_shot(w, hinv.unsqueeze(0), removed)[0, 0]
    # independent answer: minimise (v - w)^T H (v - w) with v_q = 0 by solving over the free coordinates
    free = [i for i in range(6) if i != q]
    v = torch.zeros(6, dtype=torch.float64)
    v[free] = w[0, 0, free] + torch.linalg.solve(h[free][:, free], h[free][:, [q]] @ w[0, 0, [q]])
    torch.testing.assert_close(new, v)
    # and the error it leaves is the saliency w_q^2 / [H^-1]_qq (twice eq. 7's 1/2-scaled loss)
    err = (new - w[0, 0]) @ h @ (new - w[0, 0])
    sal = obs_saliency(w, hinv.unsqueeze(0))[0, 0, q]
    assert err.item() == pytest.approx(2 * sal.item(), rel=1e-9)


def _naive_greedy(w, hinv, count):
    w, inv = w.clone(), hinv.clone()
    removed = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(count):
        score = (w**2 / torch.diagonal(inv)).masked_fill(removed, float("inf"))
        q = score.argmin()
        w -= w[q] / inv[q, q] * inv[:, q]
        inv -= torch.outer(inv[:, q], inv[q]) / inv[q, q]
        w[q], removed[q] = 0.0, True
    return w


def test_exact_mode_equals_the_naive_greedy_obs_with_full_inverse_downdates():
    h = _hessian(12)
    hinv = torch.linalg.inv(h)
    w = torch.randn(4, 12, dtype=torch.float64)
    counts = torch.tensor([0, 3, 7, 11])
    new, removed = obs_exact(w, hinv, counts)
    assert removed.sum(1).tolist() == counts.tolist()
    for r in range(4):
        torch.testing.assert_close(new[r].double(), _naive_greedy(w[r], hinv, int(counts[r])), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.85])
def test_exact_is_no_worse_than_one_shot_and_both_beat_magnitude(sparsity):
    h = _hessian(16, seed=1).unsqueeze(0)
    w = torch.randn(1, 8, 16, dtype=torch.float64)
    errors = {}
    for mode in ("one_shot", "exact"):
        new, keep = prune_layer(w, h, sparsity, mode, damp=0.0)
        assert (new[~keep] == 0).all()
        assert 1 - keep.double().mean().item() == pytest.approx(sparsity, abs=1 / 128)
        errors[mode] = reconstruction_error(h, new - w).item()
    magnitude = w * ~lowest_mask(w.abs(), sparsity)
    assert errors["exact"] <= errors["one_shot"] * (1 + 1e-6)
    assert errors["exact"] < reconstruction_error(h, magnitude - w).item()


def test_global_sparsity_hits_the_overall_fraction():
    scores = {"a": torch.rand(100), "b": torch.rand(300) * 3}
    per_layer = global_sparsity(scores, 0.5)
    assert per_layer["a"] > per_layer["b"]  # the layer with the smaller saliencies loses more
    assert (per_layer["a"] * 100 + per_layer["b"] * 300) == pytest.approx(200)


def test_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(UserError, match="sparsity"):
        LOBSConfig(sparsity=1.0)
    with pytest.raises(UserError, match="mode"):
        LOBSConfig(mode="greedy")
    with pytest.raises(UserError, match="inputs"):
        LOBSConfig(inputs="teacher")
