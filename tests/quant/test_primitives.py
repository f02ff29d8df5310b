"""Each quantizer against an independent computation of its paper's formula, level counts, STE masks."""
import math

import numpy as np
import pytest
import torch

from deepshrink.quant import primitives as P


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return torch.randn(8, 4, 3, 3) * 0.5


def test_sign_ste_forward_and_clipped_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = P.sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]  # 1{|x| <= 1}


def test_bwn_scale_is_mean_abs_per_filter_and_per_layer(weight):
    w = weight.numpy()
    assert np.allclose(P.bwn_scale(weight).numpy(), np.abs(w).reshape(8, -1).mean(1), atol=1e-7)
    assert np.isclose(P.bwn_scale(weight, per_channel=False).item(), np.abs(w).mean(), atol=1e-7)
    q = P.bwn_quantize(weight)
    for o in range(8):  # exactly two levels per filter, +-alpha_o
        levels = sorted(set(np.round(q[o].detach().numpy().ravel(), 6)))
        a = np.abs(w[o]).mean()
        assert len(levels) == 2 and np.allclose(levels, [-a, a], atol=1e-6)


def test_bwn_latent_gradient_uses_the_clipped_mask():
    w = torch.tensor([[0.5, -2.0, 0.1, 1.5]], requires_grad=True)
    P.bwn_quantize(w).sum().backward()
    alpha = w.detach().abs().mean()
    sign = torch.sign(w.detach())
    # d/dw_i of sum_j alpha*sign(w_j) = alpha*1{|w_i|<=1} + sign(w_i)/n * sum_j sign(w_j)
    expected = alpha * (w.detach().abs() <= 1) + sign / 4 * sign.sum()
    assert torch.allclose(w.grad, expected)


def test_twn_threshold_and_alpha_match_the_paper(weight):
    w = np.abs(weight.numpy()).ravel()
    delta = 0.7 * w.mean()
    big = w[w > delta]
    assert np.isclose(P.twn_threshold(weight).item(), delta, rtol=1e-6)
    alpha = P.twn_scale(weight, P.twn_threshold(weight)).item()
    assert np.isclose(alpha, big.sum() / len(big), rtol=1e-6)  # mean over |W_i| > Delta
    assert not np.isclose(alpha, big.sum() / (w <= delta).sum(), rtol=1e-3)  # not the seed bug
    q = P.twn_quantize(weight)
    assert len(torch.unique(q)) <= 3
    assert all(min(abs(v - a) for a in (-alpha, 0.0, alpha)) < 1e-6 for v in torch.unique(q).tolist())


def test_twn_gradient_is_straight_through(weight):
    w = weight.clone().requires_grad_(True)
    g = torch.randn_like(w)
    P.twn_quantize(w).backward(g)
    assert torch.equal(w.grad, g)


def test_ttq_forward_and_sum_gradients(weight):
    w = weight.clone().requires_grad_(True)
    w_p, w_n = P.ttq_init_scales(weight)
    w_p.requires_grad_(True)
    w_n.requires_grad_(True)
    delta = 0.05 * weight.abs().max()
    pos, neg = weight > delta, weight < -delta
    assert torch.isclose(w_p, weight[pos].abs().mean()) and torch.isclose(w_n, weight[neg].abs().mean())
    q = P.ttq_quantize(w, w_p, w_n)
    expected = torch.where(pos, w_p.detach(), torch.where(neg, -w_n.detach(), torch.zeros(())))
    assert torch.equal(q.detach(), expected)
    assert len(torch.unique(q)) <= 3
    g = torch.randn_like(weight)
    q.backward(g)
    assert torch.isclose(w_p.grad, g[pos].sum())  # Eq. 7: a SUM over I_p
    assert torch.isclose(w_n.grad, -g[neg].sum())  # level is -W_n
    scale = torch.where(pos, w_p.detach(), torch.where(neg, w_n.detach(), torch.ones(())))
    assert torch.allclose(w.grad, g * scale)  # Eq. 8: W_p, 1, W_n


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_weight_matches_eq9_and_has_at_most_2k_levels(weight, bits):
    n = 2**bits - 1
    t = np.tanh(weight.numpy())
    expected = 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * n) / n - 1
    q = P.dorefa_weight(weight, bits)
    assert np.allclose(q.numpy(), expected, atol=1e-6)
    assert len(torch.unique(q)) <= 2**bits
    codes, step = P.dorefa_weight_codes(weight, bits)
    assert int(codes.min()) >= 0 and int(codes.max()) <= n
    assert torch.allclose((codes - n / 2) * step, q, atol=1e-6)


def test_dorefa_one_bit_weight_is_mean_abs_times_sign(weight):
    q = P.dorefa_weight(weight, 1)
    assert torch.allclose(q, weight.abs().mean() * torch.sign(weight))


def test_dorefa_one_bit_weight_backward_is_identity_eq8():
    """Eq. 8: the latent weights receive the output gradient unchanged (no E|W| factor, no path
    through the mean)."""
    weight = torch.randn(16, 8, 3, 3, requires_grad=True)
    upstream = torch.randn(16, 8, 3, 3)
    P.dorefa_weight(weight, 1).backward(upstream)
    assert torch.equal(weight.grad, upstream)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_activation_clip_grid_and_ste(bits):
    x = torch.linspace(-1, 2, 301, requires_grad=True)
    y = P.dorefa_activation(x, bits)
    n = 2**bits - 1
    expected = np.round(np.clip(x.detach().numpy(), 0, 1) * n) / n
    assert np.allclose(y.detach().numpy(), expected, atol=1e-7)
    assert len(torch.unique(y)) <= 2**bits
    y.sum().backward()
    inside = (x.detach() >= 0) & (x.detach() <= 1)
    assert torch.equal(x.grad, inside.float())
    assert torch.allclose(P.dorefa_activation_codes(x.detach(), bits).float() / n, y.detach())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dorefa_gradient_quantizer_on_grid_and_unbiased(bits):
    gen = torch.Generator().manual_seed(0)
    dr = torch.randn(4, 64, generator=gen)
    n = 2**bits - 1
    max0 = dr.abs().amax(dim=1, keepdim=True)
    draws = torch.stack([P.dorefa_quantize_gradient(dr, bits, generator=gen) for _ in range(4000)])
    c = (draws / (2 * max0) + 0.5) * n  # the grid index of every draw
    assert torch.allclose(c, torch.round(c), atol=1e-4)
    assert c.min() >= -1e-4 and c.max() <= n + 1e-4
    # unbiased: the mean of 4000 draws is within 5 standard errors of dr (per-draw sd <= max0/n)
    tol = 5 * (max0 / n) / math.sqrt(4000) + 1e-6
    assert ((draws.mean(0) - dr).abs() <= tol).all()


def test_quantize_gradient_is_identity_forward_and_quantizes_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 10, requires_grad=True)
    y = P.quantize_gradient(x, 2)
    assert torch.equal(y, x)
    g = torch.randn(2, 10)
    y.backward(g)
    max0 = g.abs().amax(dim=1, keepdim=True)
    c = (x.grad / (2 * max0) + 0.5) * 3
    assert torch.allclose(c, torch.round(c), atol=1e-5) and len(torch.unique(x.grad[0])) <= 4


def test_xnor_scaling_map_is_box_filtered_channel_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    a = x.abs().mean(dim=1, keepdim=True)
    k = P.xnor_scaling_map(a, 3, stride=1, padding=1)
    padded = np.pad(a.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    assert np.isclose(k[1, 0, 2, 3].item(), padded[1, 0, 2:5, 3:6].mean(), atol=1e-6)
    assert k.shape == (2, 1, 6, 6)
