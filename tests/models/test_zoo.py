"""Every registered model: forward shape, parameter count against an independent count, no NaN."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.errors import UserError


def conv_bn(cin: int, cout: int, kernel: int) -> int:
    """Parameters of a bias-free conv followed by BatchNorm (gamma, beta)."""
    return cin * cout * kernel * kernel + 2 * cout


def cifar_resnet_params(depth: int, shortcut: str, classes: int = 10, cin: int = 3) -> int:
    """He et al. 2016 CIFAR ResNet counted from its layout: stem, 3 stages of n blocks, fc."""
    n = (depth - 2) // 6
    total = conv_bn(cin, 16, 3) + 64 * classes + classes
    previous = 16
    for width in (16, 32, 64):
        total += conv_bn(previous, width, 3) + conv_bn(width, width, 3)  # first block
        total += (n - 1) * 2 * conv_bn(width, width, 3)
        if shortcut == "B" and width != previous:
            total += conv_bn(previous, width, 1)
        previous = width
    return total


def nin_params(batch_norm: bool, classes: int = 10, cin: int = 3) -> int:
    """NIN's CIFAR layout (Lin et al. 2014): 192-160-96, 192-192-192, 192-192-classes."""
    convs = [(cin, 192, 5), (192, 160, 1), (160, 96, 1), (96, 192, 5), (192, 192, 1), (192, 192, 1),
             (192, 192, 3), (192, 192, 1)]
    per_conv_extra = 2 if batch_norm else 1  # BN gamma+beta, or the conv's bias
    total = sum(i * o * k * k + per_conv_extra * o for i, o, k in convs)
    return total + 192 * classes + classes


def efficientnet_lite0_params(classes: int = 1000, cin: int = 3) -> int:
    """EfficientNet-Lite0 from the TF stage table: stem, MBConv blocks (expand, depthwise, project), head, fc."""
    stages = [(1, 3, 1, 32, 16), (2, 3, 6, 16, 24), (2, 5, 6, 24, 40), (3, 3, 6, 40, 80), (3, 5, 6, 80, 112),
              (4, 5, 6, 112, 192), (1, 3, 6, 192, 320)]  # repeats, kernel, expand, in, out
    total = conv_bn(cin, 32, 3) + conv_bn(320, 1280, 1) + 1280 * classes + classes
    for repeats, kernel, expand, first_in, out in stages:
        for i in range(repeats):
            hidden = (first_in if i == 0 else out) * expand
            total += conv_bn(hidden // expand, hidden, 1) if expand != 1 else 0
            total += hidden * kernel * kernel + 2 * hidden + conv_bn(hidden, out, 1)  # depthwise, project
    return total


def vit_params(dim: int = 128, depth: int = 4, hidden: int = 256, tokens: int = 64, classes: int = 10,
               cin: int = 3) -> int:
    """A pre-norm ViT: 4x4 patch conv, position embedding, per block two LayerNorms, q/k/v/out projections
    and a two-Linear MLP, then a LayerNorm and the head."""
    block = 2 * 2 * dim + 4 * (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    return cin * 16 * dim + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


# Default-argument parameter counts. Published figures: torchvision's model cards for ResNet-18/34/50,
# Han et al. 2015 (Table 1/2) for LeNet-300-100 (267K) and LeNet-5 (431K with 20/50 filters; ours is the
# 6/16-filter LeNet-5 of LeCun 1998: 61,706), LQ-Nets for VGG-Small (4.6M).
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet20": cifar_resnet_params(20, "A"),
    "resnet32": cifar_resnet_params(32, "A"),
    "resnet56": cifar_resnet_params(56, "A"),
    "resnet110": cifar_resnet_params(110, "A"),
    "lenet5": 1 * 6 * 25 + 6 + 6 * 16 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10,
    "lenet300": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    "nin": nin_params(batch_norm=True),
    "vgg_small": (conv_bn(3, 128, 3) + conv_bn(128, 128, 3) + conv_bn(128, 256, 3) + conv_bn(256, 256, 3)
                  + conv_bn(256, 512, 3) + conv_bn(512, 512, 3) + 512 * 4 * 4 * 10 + 10),
    "efficientnet_lite0": efficientnet_lite0_params(),  # 4,652,008: the published 4.65 M
    "vit_tiny_cifar": vit_params(),  # 545,930
}
# ImageNet ResNets are fully convolutional up to the global pool: test their forward at 64x64 to save CPU.
FORWARD_HW = {"resnet18": 64, "resnet34": 64, "resnet50": 64, "efficientnet_lite0": 64}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    """The model with storage-free tensors: counting parameters needs shapes only (and is fast)."""
    with torch.device("meta"):
        return deepshrink.create_model(name, **kwargs)


@pytest.mark.parametrize("name", deepshrink.list_models())
def test_every_model_counts_params_and_forwards(name):
    assert name in EXPECTED_PARAMS, f"register an independent parameter count for new model {name!r}"
    assert n_params(meta_model(name)) == EXPECTED_PARAMS[name]

    torch.manual_seed(0)
    model = deepshrink.create_model(name, num_classes=7, in_channels=2).eval()
    channels, height, width = model.default_input_size
    assert channels == 2
    if name in FORWARD_HW:
        height = width = FORWARD_HW[name]
    with torch.no_grad():
        out = model(torch.randn(3, channels, height, width))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    # Layers must be plain named modules so methods can swap them, and activations modules, not functions.
    assert any(isinstance(m, nn.Conv2d) for m in model.modules()) or name == "lenet300"
    assert any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU)) for m in model.modules())


def test_cifar_resnet_depths_are_distinct_architectures():
    # The seed bug built ResNet-20 for every depth: depth 6n+2 has 3n basic blocks and 6n+1 convs + fc.
    for depth, published in [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6), (110, 1.7e6)]:
        model = meta_model(f"resnet{depth}")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == depth - 1
        assert n_params(model) == pytest.approx(published, rel=0.02)  # He et al. 2016, Table 6


def test_option_b_adds_two_projections():
    a = deepshrink.create_model("resnet20", shortcut="A")
    b = deepshrink.create_model("resnet20", shortcut="B")
    assert n_params(b) - n_params(a) == conv_bn(16, 32, 1) + conv_bn(32, 64, 1)
    assert n_params(b) == 272_474  # the shared checkpoint's README
    assert "layer2.0.downsample.0.weight" in b.state_dict()
    assert not any("downsample" in key for key in a.state_dict())


def test_option_a_shortcut_zero_pads_a_subsample():
    shortcut = deepshrink.create_model("resnet20").layer2[0].downsample
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_nin_without_batch_norm_is_the_original_network():
    assert n_params(meta_model("nin", batch_norm=False)) == nin_params(batch_norm=False) == 966_986


def test_lenet5_batch_norm_variant_adds_only_the_norms_and_keeps_the_plain_keys():
    plain, with_bn = meta_model("lenet5"), meta_model("lenet5", batch_norm=True)
    assert n_params(with_bn) - n_params(plain) == 2 * (6 + 16 + 120 + 84)
    assert set(plain.state_dict()) < set(with_bn.state_dict())  # a plain checkpoint's keys are all there
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in with_bn.modules()) == 4


def test_lenet5_runs_on_28_and_32_pixel_inputs():
    model = deepshrink.create_model("lenet5", in_channels=3).eval()
    for size in (28, 32):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_lenet300_input_size():
    model = deepshrink.create_model("lenet300", in_channels=3, input_size=32)
    assert model.fc1.in_features == 3 * 32 * 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="input_size"):
        model(torch.randn(2, 3, 28, 28))


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="shortcut"):
        deepshrink.create_model("resnet20", shortcut="C")
    with pytest.raises(UserError, match="resnet20"):  # the message lists the registered models
        deepshrink.create_model("resnet21")


def test_create_model_records_its_architecture():
    model = deepshrink.create_model("resnet32", shortcut="B", num_classes=100)
    assert model.deepshrink_arch == {"name": "resnet32", "kwargs": {"shortcut": "B", "num_classes": 100}}
    assert model.fc.out_features == 100
