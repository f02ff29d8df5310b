"""LSQ and PACT, the quantizers with a learned step or clipping level, against their papers' formulas."""
import math

import numpy as np
import pytest
import torch

from deepshrink.quant import learned_step as L


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (2, False), (4, False)])
def test_lsq_forward_grid_and_step_init(bits, signed):
    torch.manual_seed(1)
    v = torch.randn(500) if signed else torch.rand(500) * 3
    q_n, q_p = L.lsq_range(bits, signed)
    assert (q_n, q_p) == ((2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
    step = L.lsq_init_step(v, q_p)
    assert math.isclose(step.item(), 2 * v.abs().mean().item() / math.sqrt(q_p), rel_tol=1e-6)
    q = L.lsq_quantize(v, step, q_n, q_p, 1.0)
    expected = np.clip(np.round(v.numpy() / step.item()), -q_n, q_p) * step.item()
    assert np.allclose(q.numpy(), expected, atol=1e-6)
    assert len(torch.unique(q)) <= 2**bits
    codes = L.lsq_codes(v, step, q_n, q_p)
    assert torch.allclose((codes - q_n).float() * step, q, atol=1e-6)


def test_lsq_step_gradient_is_eq3_times_the_scale():
    v = torch.tensor([-5.0, -0.7, 0.2, 0.9, 4.0], requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    q_n, q_p = 2, 1
    g = L.lsq_grad_scale(v.numel(), q_p)
    assert math.isclose(g, 1 / math.sqrt(5 * 1))
    L.lsq_quantize(v, step, q_n, q_p, g).sum().backward()
    r = v.detach() / 0.5
    eq3 = torch.where(r <= -q_n, torch.tensor(-float(q_n)),
                      torch.where(r >= q_p, torch.tensor(float(q_p)), -r + torch.round(r)))
    assert torch.isclose(step.grad, eq3.sum() * g)
    assert v.grad.tolist() == [0, 1, 1, 0, 0]  # 0.9 / 0.5 >= Q_P is clipped


def test_pact_forward_and_alpha_gradient():
    x = torch.tensor([-1.0, 0.3, 1.1, 2.0, 5.0], requires_grad=True)
    alpha = torch.tensor([2.0], requires_grad=True)
    y = L.pact_quantize(x, alpha, 2)
    expected = np.round(np.clip([-1.0, 0.3, 1.1, 2.0, 5.0], 0, 2) * 3 / 2) * 2 / 3
    assert np.allclose(y.detach().numpy(), expected)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    y.backward(g)
    assert alpha.grad.item() == 9.0  # Eq. 3: sum of dL/dy_q over x >= alpha
    assert x.grad.tolist() == [0, 2, 3, 0, 0]
    assert torch.allclose(L.pact_codes(x.detach(), alpha.detach(), 2).float() * 2 / 3, y.detach())
