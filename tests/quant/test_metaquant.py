"""Meta-Quant (Chen, Wang, Pan, NeurIPS 2019): the meta network learns, replaces the STE, converts to codes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.nn import CompressedConv2d, CompressedLinear
from deepshrink.quant.metaquant import MetaNetwork, MetaQuantConfig, MetaQuantHook, MetaWeight
from deepshrink.quant.weight_quant import BinaryWeight, DoReFaWeight


class _FakeTrainer:
    device = torch.device("cpu")

    def __init__(self, params, lr=0.1):
        self.optimizer = torch.optim.SGD(params, lr=lr)


def _one_layer(quantizer, variant):
    torch.manual_seed(0)
    layer = deepshrink.quant.layers.QLinear.from_float(nn.Linear(6, 4), MetaWeight(quantizer, "fc"))
    meta = MetaNetwork(variant, hidden_size=8)
    for p in meta.parameters():  # move off the identity init so every parameter matters
        nn.init.normal_(p, std=0.3)
    hook = MetaQuantHook(meta, [layer.weight_quant], meta_lr=1e-2)
    trainer = _FakeTrainer(layer.parameters())
    hook.on_train_start(trainer)
    return layer, meta, hook, trainer


def _step(layer, hook, trainer, x, y):
    hook.before_step(trainer, x, y)
    loss = nn.functional.mse_loss(layer(x), y)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss


@pytest.mark.parametrize("variant", ["multifc", "fc-grad", "lstmfc"])
@pytest.mark.parametrize("quantizer", [BinaryWeight(per_channel=True), DoReFaWeight(2)])
def test_gradients_flow_to_the_meta_network(variant, quantizer):
    layer, meta, hook, trainer = _one_layer(quantizer, variant)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    _step(layer, hook, trainer, x, y)  # step 1: no meta gradient in the forward pass yet
    assert all(p.grad is None for p in meta.parameters())
    hook.after_backward(trainer)
    trainer.optimizer.step()
    _step(layer, hook, trainer, x, y)  # step 2: W~ = W - lr * (M + (g - M).detach()) in the forward pass
    grads = [p.grad for p in meta.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = [p.detach().clone() for p in meta.parameters()]
    hook.after_backward(trainer)  # the meta optimizer steps
    assert any(not torch.equal(b, p) for b, p in zip(before, meta.parameters()))


def test_forward_uses_lookahead_weight_and_latent_gets_meta_gradient():
    layer, meta, hook, trainer = _one_layer(BinaryWeight(per_channel=False), "fc-grad")
    quant = layer.weight_quant
    x, y = torch.randn(8, 6), torch.randn(8, 4)
    _step(layer, hook, trainer, x, y)
    hook.after_backward(trainer)
    g_q, pre = quant.quant_grad.clone(), quant.pre.clone()
    with torch.no_grad():
        expected = meta("fc", g_q, pre)  # c = 1 for BWN
    assert torch.allclose(layer.weight.grad, expected)  # the meta gradient replaced the STE one
    trainer.optimizer.step()
    hook.before_step(trainer, x, y)
    layer(x)
    # numerically W~ = W - lr * g, with g the gradient applied at the previous step
    assert torch.allclose(quant.pre, layer.weight.detach() - 0.1 * expected, atol=1e-6)


def test_dorefa_calibration_is_the_tanh_normalisation_derivative():
    quant = MetaWeight(DoReFaWeight(3))
    w = torch.randn(5, 7)
    t = torch.tanh(w)
    assert torch.allclose(quant.calibration(w), (1 - t**2) / t.abs().max())
    assert MetaWeight(BinaryWeight()).calibration(w) == 1.0


def test_meta_network_starts_as_the_straight_through_estimator():
    grad, weight = torch.randn(3, 4), torch.randn(3, 4)
    for variant in ("multifc", "fc-grad", "lstmfc"):
        meta = MetaNetwork(variant, hidden_size=5)
        assert torch.allclose(meta("k", grad, weight), grad)


@pytest.mark.parametrize("params,kind", [({"quantizer": "bwn"}, "binary"),
                                         ({"quantizer": "dorefa", "weight_bits": 2}, "uniform")])
def test_compress_trains_and_converts_to_codes(params, kind):
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    result = deepshrink.compress(model, {"method": "metaquant", "params": {**params, "meta_net": "lstmfc"},
                                         "train": {"epochs": 1, "lr": 0.01}}, train_data=data, val_data=data)
    layers = [m for m in result.model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    assert layers and all(m.encoded.kind == kind for m in layers)
    for m in layers:
        low, high = m.encoded.code_range()
        assert int(m.encoded.codes.min()) >= low and int(m.encoded.codes.max()) <= high
        levels = m.weight.unique().numel()
        assert levels <= (2 * m.weight.shape[0] if kind == "binary" else 2 ** params["weight_bits"])


def test_bad_config_is_refused_with_the_field_name():
    with pytest.raises(UserError, match="meta_net"):
        MetaQuantConfig(meta_net="rnn")
    with pytest.raises(UserError, match="weight_bits"):
        MetaQuantConfig(quantizer="dorefa", weight_bits=0)
    with pytest.raises(UserError, match="bwn is 1-bit"):
        MetaQuantConfig(quantizer="bwn", weight_bits=2)
