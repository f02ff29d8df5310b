"""Quantized layers: XNOR's scaled binary conv, DoReFa gradient bits, PACT's penalty, packable quantizers."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepshrink.cli import main as cli_main
from deepshrink.config import list_recipes, load_recipe
from deepshrink.quant import (BinaryWeight, LSQActivation, LSQWeight, PACTActivation, QConv2d, QLinear, WeightQuantizer,
                              XNORActivation, quantize_layer)
from deepshrink.quant.pact import PACTPenalty
from deepshrink.registry import PACKABLE


def test_xnor_conv_is_binary_conv_times_alpha_and_k():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    act = XNORActivation(4, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bn=False)
    layer = quantize_layer(conv, BinaryWeight(), act).eval()
    x = torch.randn(2, 4, 9, 9)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).reshape(1, 6, 1, 1)
    binary = F.conv2d(torch.where(x >= 0, 1.0, -1.0), torch.where(conv.weight >= 0, 1.0, -1.0),
                      stride=2, padding=1)  # the XNOR + popcount part
    a = x.abs().mean(dim=1, keepdim=True)
    k = F.avg_pool2d(F.pad(a, (1, 1, 1, 1)), 3, stride=2)  # box filter over |I|, zero padding counted
    with torch.no_grad():
        assert torch.allclose(layer(x), binary * alpha * k, atol=1e-5)
        converted = layer.to_compressed()
        assert torch.allclose(converted(x), layer(x), atol=1e-6)
        no_k = XNORActivation(4, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bn=False,
                              scaling_map=False)
        assert torch.allclose(quantize_layer(copy.deepcopy(conv), BinaryWeight(), no_k).eval()(x), binary * alpha,
                              atol=1e-5)  # scaling_map=False: the binary conv times alpha only


def test_xnor_linear_on_tokens_normalises_and_scales_over_features_not_time():
    torch.manual_seed(0)
    linear = QLinear.from_float(nn.Linear(8, 3), BinaryWeight(), XNORActivation(8, conv=False))
    x = torch.randn(2, 5, 8) * torch.arange(1, 9)  # (B, T, C): each feature on its own scale
    y = linear(x)  # train mode: BN over the B*T tokens, one statistic per feature
    assert linear.input_quant.bn.running_mean.shape == (8,)
    normed = F.batch_norm(x.reshape(10, 8), None, None, linear.input_quant.bn.weight, linear.input_quant.bn.bias,
                          training=True).reshape(2, 5, 8)  # (B, T, C)
    k = normed.abs().mean(-1, keepdim=True)  # (B, T, 1): K = mean over features of |BN(x)|
    expected = F.linear(torch.sign(normed), linear.quantized_weight(), linear.bias) * k
    torch.testing.assert_close(y, expected)


def test_gradient_bits_quantize_the_output_gradient_only():
    torch.manual_seed(0)
    layer = QLinear.from_float(nn.Linear(5, 7, bias=False), WeightQuantizer(), grad_bits=2)
    x = torch.eye(5)  # weight.grad = G^T with G the (quantized) output gradient
    y = layer(x)
    assert torch.equal(y, x @ layer.weight.t())  # identity forward
    g = torch.randn(5, 7)
    y.backward(g)
    quantized = layer.weight.grad.t()  # (5, 7)
    max0 = g.abs().amax(dim=1, keepdim=True)
    grid = (quantized / (2 * max0) + 0.5) * 3
    assert torch.allclose(grid, grid.round(), atol=1e-5)
    assert all(len(torch.unique(row)) <= 4 for row in quantized)
    assert not torch.allclose(quantized, g)


def test_pact_penalty_is_half_lambda_alpha_squared():
    model = nn.Sequential(QConv2d(2, 2, 1, input_quant=PACTActivation(4, alpha_init=3.0, alpha_decay=0.1)),
                          QConv2d(2, 2, 1, input_quant=PACTActivation(4, alpha_init=2.0, alpha_decay=0.1)))
    trainer = type("T", (), {"model": model})()
    loss = PACTPenalty().extra_loss(trainer, None, None, None)
    assert torch.isclose(loss, torch.tensor(0.05 * (9.0 + 4.0)))
    loss.backward()
    assert torch.isclose(model[0].input_quant.alpha.grad, torch.tensor([0.3]))


def test_lsq_activation_initialises_from_the_first_batch_and_round_trips():
    act = LSQActivation(bits=3)
    x = torch.rand(4, 8, 5, 5) * 2
    act(x)
    assert torch.isclose(act.step, 2 * x.abs().mean() / 7 ** 0.5).all() and act.signed is False
    clone = PACKABLE.get("lsq_activation").from_pack_config(act.pack_config())
    clone.load_state_dict(act.state_dict())
    assert torch.equal(clone(x), act(x)) and bool(clone.initialized)


def test_lsq_mse_init_step_has_the_least_quantization_error_on_the_first_batch():
    from deepshrink.quant import learned_step as L
    from deepshrink.quant.act_quant import lsq_mse_step

    torch.manual_seed(0)
    x = torch.relu(torch.randn(16, 8, 6, 6)) ** 2  # long-tailed, like post-ReLU activations

    def error(step):
        return float((L.lsq_quantize(x, torch.as_tensor(step), 0, 3, 1.0) - x).pow(2).mean())

    act = LSQActivation(bits=2, init="mse")
    act(x)
    step, paper = float(act.step.detach()), float(L.lsq_init_step(x, 3))
    assert step != pytest.approx(paper, rel=0.02)
    assert error(step) < error(paper)
    assert error(step) <= min(error(0.95 * step), error(1.05 * step))  # a minimum, not just better
    assert float(lsq_mse_step(x, 0, 3)) == step


def test_lsq_activation_signedness_survives_a_checkpoint_into_a_fresh_module():
    """A signed grid decided from the first batch must stay signed after load_state_dict (resume, best.pt)."""
    act = LSQActivation(bits=3)
    x = torch.randn(4, 8, 5, 5)  # negative inputs: signed grid, Q_N = -4
    act(x)
    assert act.signed is True and act.q_range == (4, 3)  # (Q_N, Q_P): the grid runs -Q_N..Q_P
    fresh = LSQActivation(bits=3)
    fresh.load_state_dict(act.state_dict())
    assert fresh.signed is True and torch.equal(fresh(x), act(x))
    assert (fresh(x) < 0).any()


def test_activation_quantizers_are_registered_packables():
    for name in ("dorefa_activation", "pact_activation", "lsq_activation", "xnor_activation"):
        assert PACKABLE.get(name).packable_name == name


def test_every_builtin_qat_recipe_loads_and_is_listed(capsys):
    names = [n for n in list_recipes() if n.split("-")[0] in {"bwn", "xnor", "twn", "ttq", "dorefa", "lsq", "pact"}]
    assert len(names) >= 7
    for name in names:
        assert load_recipe(name).train.epochs == 8
    assert cli_main(["recipes", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dorefa-w4a4g8"]["method"] == "dorefa" and "8-bit gradients" in rows["dorefa-w4a4g8"]["description"]
    assert all(rows[n]["description"] for n in names)


def test_lsq_weight_step_gradient_uses_one_over_sqrt_n_qp():
    from deepshrink.quant import learned_step as L

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    quant = LSQWeight(bits=3)
    layer = quantize_layer(conv, quant)
    assert torch.isclose(quant.step, 2 * conv.weight.abs().mean() / 3 ** 0.5).all()  # Q_P = 3
    g = torch.randn_like(conv.weight)
    layer.quantized_weight().backward(g)
    step = quant.step.detach().clone().requires_grad_(True)
    L.lsq_quantize(conv.weight.detach(), step, 4, 3, 1.0).backward(g)  # unscaled Eq. 3
    assert torch.isclose(quant.step.grad, step.grad / (conv.weight.numel() * 3) ** 0.5)


def test_fine_tuning_starts_from_the_float_weights_and_from_scratch_does_not():
    from deepshrink.config import select_layers
    from deepshrink.methods import CompressContext
    from deepshrink.registry import METHODS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    original = model[1].weight.detach().clone()
    for from_scratch in (False, True):
        recipe = load_recipe({"method": "bwn", "params": {"from_scratch": from_scratch}, "train": {"epochs": 0}})
        handler = METHODS.get("bwn").handler_cls(recipe, select_layers(model, recipe))
        out = handler.compress(copy.deepcopy(model), CompressContext(train=recipe.train))
        assert isinstance(out[1], QConv2d)
        assert torch.equal(out[1].weight.detach(), original) is (not from_scratch)


def test_a_quantizer_that_saw_no_input_is_named_with_its_layer():
    from deepshrink.errors import UserError
    from deepshrink.quant import calibrate

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = QLinear.from_float(nn.Linear(4, 4), LSQWeight(bits=4), LSQActivation(4))

        def forward(self, x):
            return self.used(x)

    model = Net()
    with pytest.raises(UserError, match=r"^unused.input_quant \(LSQActivation\) saw no input.*layer 'unused'"):
        calibrate(model, [(torch.randn(2, 4), torch.zeros(2))])
