"""Input capture and Hessians: unfolded columns reproduce the layer, H = X X^T / N exactly."""
import pytest
import torch
from torch import nn

from deepshrink.layerwise.capture import InputCapture, execution_order, layer_columns, weight_matrix
from deepshrink.layerwise.hessian import HessianAccumulator, inverse, schur_free

CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 1), groups=2, padding=(1, 0)),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, padding=1),  # depthwise
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
]


@pytest.mark.parametrize("kwargs", CONVS)
def test_unfolded_columns_times_weight_equal_the_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(bias=False, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], 7, 9)
    cols = layer_columns(conv, x)  # (G, N, D)
    w = weight_matrix(conv)  # (G, R, D)
    y = conv(x)  # (B, out, H, W)
    prod = cols @ w.transpose(1, 2)  # (G, B*L, R)
    groups, _, rows = prod.shape
    expected = y.permute(0, 2, 3, 1).reshape(-1, groups, rows).transpose(0, 1)  # (G, B*L, R)
    torch.testing.assert_close(prod, expected, rtol=1e-5, atol=1e-5)


def test_linear_columns_are_its_inputs():
    lin = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    assert torch.equal(layer_columns(lin, x)[0], x)


def test_token_inputs_of_a_linear_give_one_column_per_token():
    lin = nn.Linear(5, 3)
    tokens = torch.randn(2, 7, 5)  # (B, T, C)
    cols = layer_columns(lin, tokens)  # (1, B*T, C)
    assert cols.shape == (1, 14, 5)
    torch.testing.assert_close(cols[0] @ lin.weight.detach().T + lin.bias, lin(tokens).reshape(14, 3))
    acc = HessianAccumulator(groups=1, dim=5)
    acc.add(cols)
    flat = tokens.reshape(14, 5).double()
    torch.testing.assert_close(acc.hessian()[0], flat.T @ flat / 14)  # N counts tokens, not sequences


def test_hessian_is_xxt_over_samples_with_bias_column():
    torch.manual_seed(0)
    cols = torch.randn(1, 50, 4)
    acc = HessianAccumulator(1, 4, bias=True)
    acc.add(cols[:, :20])
    acc.add(cols[:, 20:])  # two chunks, divided by 50 samples, not by 2 batches
    x = torch.cat([cols[0], torch.ones(50, 1)], 1).double()
    torch.testing.assert_close(acc.hessian()[0], x.T @ x / 50)
    assert acc.hessian().dtype == torch.float64


def test_subsampling_bounds_the_samples_per_call():
    acc = HessianAccumulator(1, 3, max_samples=10)
    acc.add(torch.randn(1, 1000, 3))
    assert acc.count == 10


def test_inverse_of_rank_deficient_hessian_is_finite():
    x = torch.randn(3, 8, dtype=torch.float64)  # 3 samples, 8 dims: rank 3
    x[:, 5] = 0  # a dead input channel
    h = (x.T @ x / 3).unsqueeze(0)
    inv = inverse(h, damp=0.01)
    assert torch.isfinite(inv).all()
    inv0 = inverse(h, damp=0.0)  # no damping asked: retries with tiny damping, still finite
    assert torch.isfinite(inv0).all()
    assert torch.isfinite(inverse(torch.zeros(1, 4, 4, dtype=torch.float64))).all()


def test_schur_complement_gives_the_optimal_bias_shift():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200, 4), torch.ones(200, 1)], 1).double()
    h = (x.T @ x / 200).unsqueeze(0)
    delta_c = torch.randn(1, 1, 4, dtype=torch.float64)
    schur, gain = schur_free(h, 1, damp=0.0)
    shift = -(gain @ delta_c.transpose(1, 2)).reshape(1, 1, 1)
    full = torch.cat([delta_c, shift], 2)[0, 0]
    err = full @ h[0] @ full
    assert err == pytest.approx((delta_c[0, 0] @ schur[0] @ delta_c[0, 0]).item(), rel=1e-6)
    for other in torch.linspace(-1, 1, 11):  # any other bias shift is worse
        alt = torch.cat([delta_c[0, 0], shift[0, 0] + other])
        assert alt @ h[0] @ alt >= err - 1e-12


def test_capture_stops_the_forward_and_order_follows_execution():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(4, 2)  # defined first, runs last
            self.early = nn.Linear(3, 4)

        def forward(self, x):
            return self.late(torch.relu(self.early(x)))

    net = Net()
    seen = []
    with InputCapture(net.early, seen.append) as cap:
        cap.run(net, [torch.randn(5, 3)])
    assert len(seen) == 1 and seen[0].shape == (5, 3)
    assert execution_order(net, ["late", "early"], torch.randn(1, 3)) == ["early", "late"]


def test_bn_shift_correction_keeps_original_stats_and_adds_the_measured_change():
    import copy

    from deepshrink.layerwise.base import correct_bn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    net[1].running_mean.fill_(0.3)
    net[1].running_var.fill_(2.0)
    net.eval()
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    reference = copy.deepcopy(net)
    unchanged = copy.deepcopy(net)
    correct_bn(unchanged, reference, batches)
    torch.testing.assert_close(unchanged[1].running_mean, net[1].running_mean)
    torch.testing.assert_close(unchanged[1].running_var, net[1].running_var)
    shifted = copy.deepcopy(net)
    shifted[0].bias.data += 0.5  # compression moved every output of conv 0 by +0.5
    shifted[0].weight.data *= 2.0
    correct_bn(shifted, reference, batches)
    x = torch.cat(batches)
    y_new, y_old = shifted[0](x), net[0](x)
    expected_mean = 0.3 + (y_new.mean((0, 2, 3)) - y_old.mean((0, 2, 3)))
    expected_var = 2.0 * y_new.var((0, 2, 3)) / y_old.var((0, 2, 3))
    torch.testing.assert_close(shifted[1].running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shifted[1].running_var, expected_var, rtol=1e-4, atol=1e-5)


def test_a_hessian_of_no_input_names_the_layer():
    from deepshrink.errors import UserError

    with pytest.raises(UserError, match=r"no input reached layer 'block.fc' during calibration"):
        HessianAccumulator(groups=1, dim=3).hessian("layer 'block.fc'")
