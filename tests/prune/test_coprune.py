"""Co-Prune (Chen, Wang, Pan, IJCAI 2019): mask formula, alpha schedule, STE gradient, sparse convert."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.nn import CompressedConv2d, CompressedLinear
from deepshrink.prune.coprune import (CoPruneConfig, CoPruneConv2d, CoPruneHook, alpha_schedule, coprune_mask,
                                      keep_schedule, masked_ste)


def test_mask_keeps_the_largest_mixed_magnitudes():
    torch.manual_seed(0)
    source, target = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    mask = coprune_mask(source, target, alpha=0.3, keep_ratio=0.25)
    score = 0.3 * source.abs() + 0.7 * target.abs()  # independent computation of the criterion
    n_keep = round(0.25 * score.numel())
    assert mask.dtype == torch.bool and mask.shape == source.shape and int(mask.sum()) == n_keep
    threshold = score.flatten().sort(descending=True).values[n_keep - 1]
    assert torch.equal(mask, score >= threshold)  # no ties in continuous random data
    # the two ends of the schedule are source-only and target-only magnitude pruning
    assert torch.equal(coprune_mask(source, target, 1.0, 0.25),
                       source.abs() >= source.abs().flatten().sort(descending=True).values[n_keep - 1])
    assert torch.equal(coprune_mask(source, target, 0.0, 0.25),
                       target.abs() >= target.abs().flatten().sort(descending=True).values[n_keep - 1])


def test_alpha_decreases_stage_by_stage_and_keep_ratio_ramps():
    assert alpha_schedule(1.0, 0.0, 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert alpha_schedule(0.8, 0.2, 1) == [0.2]
    assert keep_schedule(0.2, 4, ramp=True) == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert keep_schedule(0.2, 3, ramp=False) == [0.2, 0.2, 0.2]


def test_hook_recomputes_masks_at_each_stage_start():
    torch.manual_seed(0)
    layer = CoPruneConv2d.from_conv(nn.Conv2d(4, 8, 3), torch.randn(8, 4, 3, 3), keep_ratio=0.5)
    hook = CoPruneHook({"conv": layer}, alpha_schedule(1.0, 0.0, 2), ramp_keep=False, total_steps=4)
    hook.before_step(None, None, None)
    assert torch.equal(layer.mask, coprune_mask(layer.source_weight, layer.weight.detach(), 1.0, 0.5))
    with torch.no_grad():
        layer.weight.normal_()  # target weights drift during training
    hook.before_step(None, None, None)  # still stage 0: mask unchanged
    assert torch.equal(layer.mask, coprune_mask(layer.source_weight, layer.weight.detach() * 0, 1.0, 0.5))
    hook.before_step(None, None, None)  # stage 1: alpha = 0, the target magnitudes decide
    assert hook.stage == 1
    assert torch.equal(layer.mask, coprune_mask(layer.source_weight, layer.weight.detach(), 0.0, 0.5))


def test_straight_through_gradient_reaches_pruned_weights():
    weight = torch.randn(5, 6, requires_grad=True)
    mask = torch.rand(5, 6) > 0.5
    x = torch.randn(3, 6)
    out = x @ masked_ste(weight, mask).T
    assert torch.allclose(out, x @ (weight * mask).T.detach())  # forward uses W * M
    out.sum().backward()
    dense_grad = x.sum(0).expand(5, 6)  # d(sum(x W^T))/dW without any mask
    assert torch.allclose(weight.grad, dense_grad)  # pruned entries get the gradient too


def test_compress_with_source_model_and_convert_to_sparse_encoded_weights():
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    source = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(4)]
    recipe = {"method": "coprune", "params": {"keep_ratio": 0.3, "stages": 2}, "train": {"epochs": 1, "lr": 0.01}}
    result = deepshrink.compress(model, recipe, train_data=data, extra={"source_model": source})
    compressed = [m for m in result.model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    assert compressed, "convert must produce compressed layers"
    for layer in compressed:
        encoded = layer.encoded
        assert encoded.kind == "sparse" and encoded.mask.shape == tuple(layer.weight.shape)
        assert int(encoded.mask.sum()) == round(0.3 * encoded.mask.numel())
        assert torch.equal(layer.weight, encoded.dequantize())
        assert int((layer.weight != 0).sum()) <= int(encoded.mask.sum())


def test_per_layer_keep_ratio_from_the_recipe():
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20")
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    recipe = {"method": "coprune", "params": {"keep_ratio": 0.5},
              "layers": [{"pattern": "layer3.*", "params": {"keep_ratio": 0.1}}], "train": {"epochs": 0}}
    result = deepshrink.compress(model, recipe, train_data=data)
    assert result.model.layer3[1].conv1.encoded.mask.float().mean().item() == pytest.approx(0.1, abs=1e-3)
    assert result.model.layer1[1].conv1.encoded.mask.float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_bad_config_and_mismatched_source_are_refused():
    with pytest.raises(UserError, match="alpha_start"):
        CoPruneConfig(alpha_start=1.5)
    with pytest.raises(UserError, match="stages"):
        CoPruneConfig(stages=0)
    model = deepshrink.create_model("lenet5", num_classes=10, in_channels=1)
    wrong = deepshrink.create_model("lenet5", num_classes=10, in_channels=3)
    with pytest.raises(UserError, match="source_model"):
        deepshrink.compress(model, {"method": "coprune", "keep_first_last": False, "train": {"epochs": 0}},
                            train_data=[], extra={"source_model": wrong})


def test_packed_coprune_model_loads_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    result = deepshrink.compress(deepshrink.create_model("lenet5"),
                                 {"method": "coprune", "params": {"keep_ratio": 0.2}, "train": {"epochs": 0}},
                                 train_data=[])
    report = deepshrink.pack(result.model, tmp_path / "coprune.dsz")
    assert report["totals"]["ratio_vs_fp32"] > 3  # 80% of the pruned layers' weights are not stored
    loaded = deepshrink.load(tmp_path / "coprune.dsz")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model(x))
