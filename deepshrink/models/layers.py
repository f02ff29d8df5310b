"""Building blocks shared by the model families: 3x3/1x1 convs and the standard initialisation.

Convolutions and linears are plain `nn.Conv2d`/`nn.Linear` submodules and every ReLU is its own module,
so compression methods can replace a layer by name (`deepshrink.nn.set_module`) or wrap an activation.
"""
from __future__ import annotations

from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows), as in torchvision's ResNet."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (projection shortcuts, bottleneck reductions)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """He et al. 2015 initialisation (kaiming normal, fan_out, ReLU gain) for convs; BN to identity.

    Linear layers keep PyTorch's default initialisation, as torchvision's ResNet does.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def as_hw(size) -> tuple[int, int]:
    """An int or an (H, W) pair as an (H, W) tuple."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)
