"""L-DNQ level sets, rounding, and ADMM against its round-to-nearest start and a brute-force optimum."""
import itertools

import pytest
import torch

from deepshrink.errors import UserError
from deepshrink.layerwise.hessian import reconstruction_error, regularize
from deepshrink.layerwise.ldnq import (LDNQConfig, admm_quantize, best_alpha_rtn, decode_codes, level_values,
                                       nearest_codes, pow2_encoding, project)


@pytest.mark.parametrize("levels,values", [(3, [-1, 0, 1]), (5, [-2, -1, 0, 1, 2]), (7, [-4, -2, -1, 0, 1, 2, 4]),
                                           (9, [-8, -4, -2, -1, 0, 1, 2, 4, 8])])
def test_levels_count_levels_not_bits(levels, values):
    assert level_values(levels).tolist() == values
    assert len(level_values(levels)) == levels


@pytest.mark.parametrize("levels", [3, 5, 7, 11])
def test_nearest_codes_pick_the_closest_level_and_decode_like_the_pow2_encoding(levels):
    x = torch.linspace(-20, 20, 801, dtype=torch.float64)
    codes = nearest_codes(x, levels)
    values = level_values(levels)
    best = values[(x.unsqueeze(1) - values).abs().argmin(1)]
    assert ((decode_codes(codes) - x).abs() <= (best - x).abs() + 1e-12).all()
    enc = pow2_encoding(codes.reshape(1, 1, -1), torch.tensor(0.5, dtype=torch.float64), levels, (1, 801))
    lo, hi = enc.code_range()
    assert lo == -(levels - 1) // 2 and hi == (levels - 1) // 2
    torch.testing.assert_close(enc.dequantize()[0].double(), 0.5 * decode_codes(codes))


def _problem(rows=6, dim=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g, dtype=torch.float64)
    h = (x.T @ x / 300).unsqueeze(0)
    return torch.randn(1, rows, dim, generator=g, dtype=torch.float64), h


@pytest.mark.parametrize("levels", [3, 5, 7])
@pytest.mark.parametrize("per_channel", [True, False])
def test_admm_never_worse_than_its_round_to_nearest_start(levels, per_channel):
    w, h = _problem(seed=levels)
    codes, alpha, history = admm_quantize(w, h, levels, per_channel, iterations=30, damp=0.0)
    rtn_codes, rtn_alpha = best_alpha_rtn(w, levels, per_channel)
    final = reconstruction_error(h, alpha * decode_codes(codes) - w).item()
    start = reconstruction_error(h, rtn_alpha * decode_codes(rtn_codes) - w).item()
    assert final <= start + 1e-12
    assert history[0] == pytest.approx(start)
    assert final < start  # on a correlated H the H-aware solution is strictly better
    assert set(codes.unique().tolist()) <= set(range(-(levels - 1) // 2, (levels - 1) // 2 + 1))


def _admm_as_written(w0, h, levels, per_channel, iterations, rho=0.05, growth=1.15, damp=0.01):
    """Eq. 6-8 term for term: W = (2H + rho I)^-1 (2 H W0 + rho (G - U)), G = Proj(W + U), U += W - G."""
    h = regularize(h, damp)
    scale = torch.diagonal(h, dim1=-2, dim2=-1).mean(dim=-1).reshape(-1, 1, 1)
    codes, alpha = best_alpha_rtn(w0, levels, per_channel)
    objective = lambda c, a: reconstruction_error(h, a * decode_codes(c) - w0).item()  # noqa: E731
    best = (objective(codes, alpha), codes)
    g, u, penalty = alpha * decode_codes(codes), torch.zeros_like(w0), rho * scale
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    for _ in range(iterations):
        rhs = 2 * w0 @ h + penalty * (g - u)
        w = torch.linalg.solve(2 * h + penalty * eye, rhs.transpose(1, 2)).transpose(1, 2)
        codes, alpha = project(w + u, levels, alpha, per_channel)
        g = alpha * decode_codes(codes)
        u, penalty = u + w - g, penalty * growth
        best = min(best, (objective(codes, alpha), codes), key=lambda item: item[0])
    return best


@pytest.mark.parametrize("levels,per_channel", [(3, True), (5, False), (7, True)])
def test_admm_in_the_eigenbasis_keeps_the_iterates_of_the_plain_form(levels, per_channel):
    w, h = _problem(rows=12, dim=40, seed=levels)
    h = h.expand(2, 40, 40).clone()
    w = torch.cat([w, 0.5 * w.flip(2)])  # two groups
    error, codes = _admm_as_written(w, h, levels, per_channel, iterations=25)
    ours, _, history = admm_quantize(w, h, levels, per_channel, iterations=25)
    assert torch.equal(ours, codes)
    assert min(history[:-1]) == pytest.approx(error, rel=1e-9)


def test_admm_gets_close_to_the_brute_force_optimum_on_a_tiny_layer():
    w, h = _problem(rows=1, dim=5, seed=3)
    codes, alpha, _ = admm_quantize(w, h, 3, per_channel=True, iterations=60, damp=0.0)
    found = reconstruction_error(h, alpha * decode_codes(codes) - w).item()
    best = float("inf")
    for combo in itertools.product([-1, 0, 1], repeat=5):  # every code vector, alpha optimal through H
        q = torch.tensor(combo, dtype=torch.float64)
        denom = q @ h[0] @ q
        if denom == 0:
            continue
        a = (q @ h[0] @ w[0, 0]) / denom
        d = a * q - w[0, 0]
        best = min(best, (d @ h[0] @ d).item())
    rtn_codes, rtn_alpha = best_alpha_rtn(w, 3, True)
    rtn = reconstruction_error(h, rtn_alpha * decode_codes(rtn_codes) - w).item()
    assert best - 1e-9 <= found <= rtn
    assert found - best <= 0.5 * (rtn - best) + 1e-12  # closes at least half of RTN's gap


def test_sparse_mask_is_respected_by_the_projection():
    w, h = _problem()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    codes, _, _ = admm_quantize(w, h, 5, keep=keep, iterations=10)
    assert (codes[~keep] == 0).all()


def test_levels_validation_says_levels_are_counted():
    with pytest.raises(UserError, match="counts levels"):
        LDNQConfig(levels=4)
    with pytest.raises(UserError, match="sparsity"):
        LDNQConfig(sparsity=-0.1)


@pytest.mark.parametrize("per_channel", [True, False])
def test_polish_sweeps_never_increase_the_objective(per_channel):
    w, h = _problem(rows=8, dim=12, seed=5)
    plain = admm_quantize(w, h, 3, per_channel, iterations=10, damp=0.0, polish_sweeps=0)
    polished = admm_quantize(w, h, 3, per_channel, iterations=10, damp=0.0, polish_sweeps=2)
    assert polished[2][-1] <= plain[2][-1] + 1e-12
    assert polished[2][-1] == pytest.approx(reconstruction_error(h, polished[1] * decode_codes(polished[0]) - w).item())
