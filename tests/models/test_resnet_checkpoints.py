"""ResNets load reference checkpoints key for key: torchvision's layout and the shared CIFAR ResNet-20."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import deepshrink

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict:
    return {f"{prefix}.{k}": ((channels,) if k != "num_batches_tracked" else ()) for k in BN_KEYS}


def torchvision_resnet_state_shapes(bottleneck: bool, blocks: list[int], classes: int = 1000) -> dict:
    """Key -> shape of torchvision's resnet18/50 state_dict, written out from its layer layout."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    expansion = 4 if bottleneck else 1
    in_planes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                convs = [(planes, in_planes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, in_planes, 3), (planes, planes, 3)]
            for i, (out_c, in_c, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{i}.weight"] = (out_c, in_c, k, k)
                shapes.update(_bn(f"{p}.bn{i}", out_c))
            if b == 0 and (stage > 1 or in_planes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, in_planes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", planes * expansion))
            in_planes = planes * expansion
    shapes["fc.weight"] = (classes, 512 * expansion)
    shapes["fc.bias"] = (classes,)
    return shapes


@pytest.mark.parametrize("name,bottleneck,blocks,n_keys", [
    ("resnet18", False, [2, 2, 2, 2], 122),  # len(torchvision.models.resnet18().state_dict())
    ("resnet50", True, [3, 4, 6, 3], 320),
])
def test_state_dict_matches_torchvision(name, bottleneck, blocks, n_keys):
    expected = torchvision_resnet_state_shapes(bottleneck, blocks)
    assert len(expected) == n_keys
    model = deepshrink.create_model(name)
    state = model.state_dict()
    assert list(state) == list(expected)  # same keys in the same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # A torchvision-layout state_dict (here: the expected shapes filled with values) loads strictly.
    fake = {k: torch.full(s, 0.5) if s else torch.tensor(0) for k, s in expected.items()}
    model.load_state_dict(fake, strict=True)
    assert torch.all(model.fc.weight == 0.5)


def test_shared_resnet20_loads_key_for_key(resnet20_checkpoint):
    state = torch.load(resnet20_checkpoint, weights_only=True)
    model = deepshrink.create_model("resnet20", shortcut="B")
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])


def _load_test_images(root: Path, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(3, 1, 1)
    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in (root / "test").iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir())[:per_class]:
            pixels = torch.frombuffer(bytearray(Image.open(path).convert("RGB").tobytes()), dtype=torch.uint8)
            image = pixels.view(32, 32, 3).permute(2, 0, 1).float() / 255  # (3, 32, 32)
            images.append((image - mean) / std)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def test_shared_resnet20_is_accurate_on_real_cifar10(resnet20_checkpoint, cifar10_jpeg_root):
    # The README states 86.58% on all 10,000 test images; 50 per class must land near it (a wrong block
    # order or shortcut would not). 500 images: the 95% interval is about +-3 points.
    model = deepshrink.create_model("resnet20", shortcut="B").eval()
    model.load_state_dict(torch.load(resnet20_checkpoint, weights_only=True))
    images, labels = _load_test_images(cifar10_jpeg_root, per_class=50)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item() * 100
    assert accuracy > 80.0
