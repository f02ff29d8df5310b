"""Model zoo, a registry like timm's: `deepshrink.create_model(name, **kwargs)`; one file per family.

Every model takes `num_classes` and `in_channels`, keeps Conv2d/Linear as plain named submodules and
every activation (ReLU, ReLU6, GELU) as a module, and sets `default_input_size` = (C, H, W) (used by
`deepshrink info`).

    resnet20/32/56/110  CIFAR ResNets, shortcut="A" | "B"   (cifar_resnet.py)
    resnet18/34/50      ImageNet ResNets, torchvision keys    (resnet.py)
    lenet5, lenet300    MNIST-sized LeNets                    (lenet.py)
    nin                 Network in Network for CIFAR          (nin.py)
    vgg_small           VGG-Small for CIFAR                   (vgg.py)
    efficientnet_lite0  EfficientNet-Lite0, ImageNet weights   (efficientnet.py)
    vit_tiny_cifar      a small vision transformer for 32x32   (vit.py)
"""
from . import cifar_resnet, efficientnet, lenet, nin, resnet, vgg, vit  # noqa: F401  (import registers the models)
from .cifar_resnet import CifarResNet, ZeroPadShortcut
from .efficientnet import EfficientNetLite, MBConvBlock, SamePad2d
from .lenet import LeNet5, LeNet300
from .nin import NIN
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGGSmall
from .vit import TransformerBlock, VisionTransformer

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "EfficientNetLite", "LeNet300", "LeNet5", "MBConvBlock", "NIN",
           "ResNet", "SamePad2d", "TransformerBlock", "VGGSmall", "VisionTransformer", "ZeroPadShortcut"]
