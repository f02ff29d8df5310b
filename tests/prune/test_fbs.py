"""FBS (Gao et al., ICLR 2019): winner-take-all counts, gate shapes, skipped-channel inference, MACs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.analysis.complexity import profile
from deepshrink.config import load_recipe, select_layers
from deepshrink.errors import UserError
from deepshrink.prune.fbs import (FBSConfig, FBSHook, apply_fbs, convert_fbs, following_norm,
                                  scheduled_keep_ratio)
from deepshrink.prune.fbs_conv import FBSConv, FoldedNorm
from deepshrink.prune.fbs_gate import FBSGatedConv, calibrate_predictors, kept_channels, winner_take_all
from deepshrink.prune.fbs_infer import FBSBlock


def _gated_resnet20(keep_ratio: float, shortcut: str = "B", seed: int = 0) -> nn.Module:
    """ResNet-20 with random BN statistics and random (but tame) saliency predictors."""
    torch.manual_seed(seed)
    model = deepshrink.create_model("resnet20", shortcut=shortcut)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    layers = select_layers(model, load_recipe({"method": "fbs"}))
    gates = apply_fbs(model, {name: keep_ratio for name in layers})
    for gate in gates.values():
        gate.predictor.weight.data.normal_(0, 0.05)
        gate.predictor.bias.data.uniform_(0.2, 0.6)
    return model.eval()


@pytest.mark.parametrize("channels,ratio", [(16, 0.5), (10, 0.33), (64, 0.5), (7, 0.1), (32, 1.0)])
def test_winner_take_all_keeps_exactly_ceil_d_c_even_with_ties(channels, ratio):
    k = kept_channels(channels, ratio)
    assert k == max(1, math.ceil(ratio * channels - 1e-9))
    saliency = torch.rand(6, channels).round(decimals=1)  # many ties
    saliency[0] = 0.5  # a row where every value ties
    gate = winner_take_all(saliency, k)
    assert gate.shape == saliency.shape
    # exactly k selected per row: count through the indices topk returns, ties included
    kept_mask = torch.zeros_like(saliency, dtype=torch.bool).scatter(1, saliency.topk(k, 1).indices, True)
    assert kept_mask.sum(1).tolist() == [k] * 6
    assert torch.equal(gate, saliency * kept_mask)  # kept values pass unchanged, others are zero
    assert int((gate[0] != 0).sum()) == k  # the all-ties row still keeps k channels, not fewer


def test_gated_conv_shapes_and_per_sample_channel_count():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
    gated = FBSGatedConv(conv, bn, keep_ratio=0.5)
    gated.predictor.weight.data.normal_()
    x = torch.randn(5, 8, 6, 6)
    y = gated(x)
    assert y.shape == (5, 12, 6, 6)
    assert gated.last_saliency.shape == (5, 12) and gated.last_gate.shape == (5, 12)
    assert gated.predictor.weight.shape == (12, 8) and gated.predictor.bias.shape == (12,)
    nonzero_channels = (y.abs().sum(dim=(2, 3)) > 0).sum(1)
    assert (nonzero_channels <= 6).all()
    assert torch.equal(gated.last_gate, winner_take_all(gated.last_saliency, 6))
    # g(x) = ReLU(phi * mean|x| + rho) against an independent computation
    expected = torch.relu(x.abs().mean(dim=(2, 3)) @ gated.predictor.weight.T + gated.predictor.bias)
    assert torch.allclose(gated.last_saliency, expected, atol=1e-6)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("keep_ratio", [0.5, 0.3])
def test_skipped_channel_inference_equals_masked_dense(shortcut, keep_ratio):
    model = _gated_resnet20(keep_ratio, shortcut)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)  # training form: dense convs, channels multiplied by the gate
        convert_fbs(model)
        assert sum(isinstance(m, FBSBlock) for m in model.modules()) == 9
        skipped = model(x)  # per-sample gathered weights
        block = model.layer2[0]
        block_in = torch.relu(torch.randn(2, 16, 32, 32))
        per_block = block(block_in), block.dense_forward(block_in)
    assert torch.allclose(skipped, masked, atol=1e-5, rtol=1e-4)
    assert torch.allclose(*per_block, atol=1e-5, rtol=1e-4)


def test_macs_ratio_matches_kept_channels():
    dense = deepshrink.create_model("resnet20", shortcut="B").eval()
    model = _gated_resnet20(0.5)
    convert_fbs(model)
    x = torch.randn(2, 3, 32, 32)
    dense_macs = profile(dense, inputs=x).totals["macs"]
    fbs_macs = profile(model, inputs=x).totals["macs"]
    # by hand: per block conv1 keeps k of C outputs reading all inputs, conv2 reads k and keeps k
    expected = 3 * 16 * 9 * 32 * 32 + 64 * 10  # stem + fc
    for c_in, c, hw in [(16, 16, 32), (16, 16, 32), (16, 16, 32), (16, 32, 16), (32, 32, 16), (32, 32, 16),
                        (32, 64, 8), (64, 64, 8), (64, 64, 8)]:
        k = c // 2
        expected += k * c_in * 9 * hw * hw + k * k * 9 * hw * hw + c * c_in + c * k  # convs + predictors
        if c_in != c:
            expected += c * c_in * hw * hw  # projection shortcut stays dense
    assert fbs_macs == expected
    assert dense_macs / fbs_macs > 2.5


def test_fbs_block_pack_config_round_trip_reproduces_outputs():
    model = _gated_resnet20(0.5)
    convert_fbs(model)
    block = model.layer3[0]
    rebuilt = FBSBlock.from_pack_config(block.pack_config())
    rebuilt.load_state_dict(block.state_dict())
    x = torch.relu(torch.randn(1, 32, 16, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), block(x))


def test_keep_ratio_schedule_and_l1_penalty():
    assert scheduled_keep_ratio(1.0, 0.5, 0.0, 0.5) == 1.0
    assert scheduled_keep_ratio(1.0, 0.5, 0.25, 0.5) == pytest.approx(0.75)
    assert scheduled_keep_ratio(1.0, 0.5, 0.9, 0.5) == 0.5
    conv, bn = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
    gate = FBSGatedConv(conv, bn, 0.5)
    hook = FBSHook({gate: (1.0, 0.5)}, l1_penalty=0.1, schedule_fraction=0.5, total_steps=4)
    seen = []
    for _ in range(4):
        hook.before_step(None, None, None)
        seen.append(gate.keep_ratio)
        gate(torch.randn(2, 4, 5, 5))
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.5])
    penalty = hook.extra_loss(None, None, None, None)
    assert penalty.item() == pytest.approx(0.1 * gate.last_saliency.abs().sum(1).mean().item())
    penalty.backward()
    assert gate.predictor.weight.grad is not None and gate.predictor.weight.grad.abs().sum() > 0


def test_calibrated_predictor_is_the_least_squares_fit_of_normalised_activity():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6).eval()
    model = nn.Sequential(FBSGatedConv(conv, bn, 0.5))
    data = [(torch.rand(64, 4, 5, 5) * torch.rand(64, 4, 1, 1), torch.zeros(64, dtype=torch.long))
            for _ in range(4)]
    assert calibrate_predictors(model, data, n_batches=3) == 192
    gate = model[0]
    assert gate._calibration is None and gate.predictor.weight.abs().sum() > 0
    gate._calibration = []
    with torch.no_grad():
        for x, _ in data[:3]:
            model(x)
    gate.fit_predictor(ridge=0.0, spread=0.5)
    x = torch.cat([d[0] for d in data[:3]])  # (192, 4, 5, 5)
    with torch.no_grad():
        activity = torch.relu(bn(conv(x))).mean(dim=(2, 3))  # (192, 6)
    target = 0.5 + 0.5 * activity / activity.mean()  # g ~ 1 on average, ranking follows activity
    design = torch.cat([x.abs().mean(dim=(2, 3)), torch.ones(192, 1)], 1).double()
    solution = torch.linalg.lstsq(design, target.double()).solution  # (5, 6)
    assert torch.allclose(gate.predictor.weight.double(), solution[:-1].T, atol=0.05, rtol=0.02)
    assert torch.allclose(gate.predictor.bias.double(), solution[-1], atol=0.05, rtol=0.02)


def test_config_validation_names_the_field():
    with pytest.raises(UserError, match="keep_ratio"):
        FBSConfig(keep_ratio=0.0)
    with pytest.raises(UserError, match="keep_ratio_start"):
        FBSConfig(keep_ratio=0.5, keep_ratio_start=0.4)
    convs = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="none of the selected layers .*2.* is a conv FBS can gate"):
        apply_fbs(convs, {"0": 0.5, "2": 0.5})  # a grouped conv and a Linear: nothing to gate


def test_compress_trains_and_converts_through_the_registry():
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", shortcut="A")
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    result = deepshrink.compress(model, {"method": "fbs", "params": {"keep_ratio": 0.5, "calib_batches": 1},
                                         "train": {"epochs": 1, "lr": 0.01}},
                                 train_data=data, val_data=data)
    blocks = [m for m in result.model.modules() if isinstance(m, FBSBlock)]
    assert len(blocks) == 9 and all(s["keep_ratio"] == 0.5 for b in blocks for s in b.stages)
    assert math.isfinite(result.metrics["top1"])


def test_packed_fbs_model_loads_and_reproduces_outputs(tmp_path):
    model = _gated_resnet20(0.5)
    convert_fbs(model)
    deepshrink.pack(model, tmp_path / "fbs.dsz")
    loaded = deepshrink.load(tmp_path / "fbs.dsz")
    assert sum(isinstance(m, FBSBlock) for m in loaded.modules()) == 9
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


# ---------------------------------------------------------------- any CNN: convs without BN, BN by module order
def _nonzero_channels(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) number of channels with any nonzero value, per sample."""
    return (y.abs().sum(dim=(2, 3)) > 0).sum(1)


def _output_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def _trained_fbs_lenet5(keep_ratio: float = 0.5):
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5")
    gen = torch.Generator().manual_seed(2)
    data = [(torch.rand(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(2)]
    before = model.conv2.weight.detach().clone()
    result = deepshrink.compress(model, {"method": "fbs", "params": {"keep_ratio": keep_ratio, "calib_batches": 1},
                                         "train": {"epochs": 1, "lr": 0.05, "batch_size": 16}},
                                 train_data=data, val_data=data)
    return result, before, data


def test_lenet5_without_batchnorm_gates_conv2_trains_and_skips_channels():
    result, before, data = _trained_fbs_lenet5(0.5)
    model = result.model.eval()
    # keep_first_last: conv1 and fc3 dense; the Linear layers are not convs; conv2 (16 channels) is gated
    assert isinstance(model.conv2, FBSConv) and isinstance(model.conv1, nn.Conv2d)
    assert [type(m) for m in (model.fc1, model.fc2, model.fc3)] == [nn.Linear] * 3
    assert not torch.equal(model.conv2.weight, before)  # two training steps changed the (BN-free) conv
    x = data[0][0]
    y = _output_of(model, "conv2", x)  # (16, 16, 10, 10)
    assert _nonzero_channels(y).tolist() == [kept_channels(16, 0.5)] * 16 == [8] * 16
    with torch.no_grad():
        conv_in = model.pool1(model.relu1(model.conv1(x)))
        assert torch.allclose(model.conv2(conv_in), model.conv2.dense_forward(conv_in), atol=1e-5)
    assert math.isfinite(result.metrics["top1"])


def test_bare_gated_conv_multiplies_the_conv_output_bias_included():
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5").eval()
    dense = nn.Conv2d(6, 16, 5)
    dense.load_state_dict(model.conv2.state_dict())
    gates = apply_fbs(model, {"conv2": 0.25})
    gate = gates["conv2"]
    assert torch.equal(gate.conv.weight, dense.weight)
    assert isinstance(gate.bn, nn.Identity) and not isinstance(gate.bn, nn.BatchNorm2d)
    gate.predictor.weight.data.normal_(0, 0.5)
    x = torch.rand(4, 6, 14, 14)
    with torch.no_grad():
        y = gate(x)
        expected = dense(x) * winner_take_all(gate.last_saliency, 4)[:, :, None, None]
    assert torch.equal(y, expected)
    assert _nonzero_channels(y).tolist() == [4] * 4  # the bias does not leak into suppressed channels
    converted = convert_fbs(model).conv2
    with torch.no_grad():
        assert torch.allclose(converted(x), expected, atol=1e-5)


def test_lenet5_fbs_pack_and_load_reproduce_outputs_exactly(tmp_path):
    result, _, data = _trained_fbs_lenet5(0.5)
    model = result.model.eval()
    deepshrink.pack(model, tmp_path / "fbs.dsz")
    loaded = deepshrink.load(tmp_path / "fbs.dsz")
    assert isinstance(loaded.conv2, FBSConv) and loaded.conv2.keep_ratio == 0.5
    with torch.no_grad():
        for x, _ in data:
            assert torch.equal(loaded(x), model(x))


def test_fbs_conv_macs_count_only_kept_output_channels():
    result, _, data = _trained_fbs_lenet5(0.5)
    model = result.model.eval()
    rows = {row.name: row for row in profile(model, inputs=data[0][0]).layers}
    assert rows["conv2"].macs == 8 * 6 * 25 * 10 * 10 + 16 * 6  # kept x C_in x 5x5 x 10x10 + predictor
    dense_rows = {row.name: row for row in profile(deepshrink.create_model("lenet5")).layers}
    assert dense_rows["conv2"].macs == 16 * 6 * 25 * 10 * 10


def test_fbs_on_a_user_sequential_of_convs_without_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(2)]
    result = deepshrink.compress(model, {"method": "fbs", "keep_first_last": False,
                                         "params": {"keep_ratio": 0.3, "calib_batches": 1},
                                         "train": {"epochs": 1, "lr": 0.01, "batch_size": 8}},
                                 train_data=data, val_data=data)
    model = result.model.eval()
    assert isinstance(model[0], FBSConv) and isinstance(model[2], FBSConv) and isinstance(model[6], nn.Linear)
    x = data[1][0]
    assert _nonzero_channels(_output_of(model, "0", x)).tolist() == [math.ceil(0.3 * 8)] * 8
    assert _nonzero_channels(_output_of(model, "2", x)).tolist() == [math.ceil(0.3 * 10)] * 8


def test_batchnorm_found_by_module_order_is_gated_after_normalisation(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 1), nn.ReLU())
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        bn_out = model[1](model[0](x))  # what the gate must scale: the BN output, not the conv output
    # a BN registered after a conv but with other channels is not that conv's BN
    mismatched = nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(4))
    assert following_norm(mismatched, "0") is None and following_norm(model, "3") == "4"
    gates = apply_fbs(model, {"0": 0.5, "3": 0.5, "6": 0.4})
    assert [isinstance(gates[name].bn, nn.BatchNorm2d) for name in ("0", "3", "6")] == [True, True, False]
    assert isinstance(model[1], FoldedNorm) and isinstance(model[4], FoldedNorm)
    for gate in gates.values():
        gate.predictor.weight.data.normal_(0, 0.5)
    with torch.no_grad():
        gated = gates["0"](x)
        assert torch.allclose(gated, bn_out * gates["0"].last_gate[:, :, None, None], atol=1e-6)
        masked = model(x)
        convert_fbs(model)
        assert [type(model[i]) for i in (0, 3, 6)] == [FBSConv] * 3
        assert torch.allclose(model(x), masked, atol=1e-5)
        # a batch larger than one gather budget runs in chunks and computes the same
        monkeypatch.setattr("deepshrink.prune.fbs_conv.GATHER_BUDGET", 3 * 8 * 3 * 9)
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_resnet_stem_gated_outside_blocks_packs_with_folded_norm(tmp_path):
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", shortcut="B")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2) for b in range(3) for c in (1, 2)]
    names += ["layer2.0.downsample.0"]  # a shortcut projection: must stay dense
    gates = apply_fbs(model, {name: 0.5 for name in names})
    assert "layer2.0.downsample.0" not in gates and len(gates) == 13
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)
    convert_fbs(model)
    assert isinstance(model.conv1, FBSConv) and isinstance(model.bn1, FoldedNorm)
    assert sum(isinstance(m, FBSBlock) for m in model.modules()) == 6
    deepshrink.pack(model, tmp_path / "stem.dsz")
    loaded = deepshrink.load(tmp_path / "stem.dsz")
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
