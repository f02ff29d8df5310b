"""Fixtures for the run-time engine tests: a small ResNet trained on scikit-learn's 8x8 digits, and
its W4A4 (DoReFa) and weight-only (5-level pow2, L-DNQ's levels) compressions, packed and loaded."""
from __future__ import annotations

import pytest
import torch

import deepshrink
from deepshrink.data import get_dataset, make_loader


def _batches(split: str, batch_size: int, train: bool):
    return make_loader(get_dataset("digits", split), batch_size, train=train, augment=False)


@pytest.fixture(scope="session")
def digits_test():
    """The digits test split as one (images (360, 1, 8, 8), labels) pair."""
    images, labels = zip(*_batches("test", 500, train=False))
    return torch.cat(images), torch.cat(labels)


@pytest.fixture(scope="session")
def digits_calibration():
    """128 training images (N, 1, 8, 8), the calibration data of the integer engine."""
    return torch.cat([x for x, _ in _batches("train", 128, train=False)])[:128]


@pytest.fixture(scope="session")
def float_digits_resnet():
    """A ResNet-20 (1x1 projection shortcuts) trained one epoch on the digits (~94% top-1)."""
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=10, in_channels=1, shortcut="B")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for images, labels in _batches("train", 32, train=True):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


def _compressed(model, recipe, tmp_path_factory, name, overrides, **data):
    import copy

    result = deepshrink.compress(copy.deepcopy(model), recipe, overrides=overrides, **data)
    path = tmp_path_factory.mktemp("runtime") / f"{name}.dsz"
    deepshrink.pack(result.model.eval(), path)
    return deepshrink.load(path).eval(), path


@pytest.fixture(scope="session")
def w4a4_digits(float_digits_resnet, digits_calibration, tmp_path_factory):
    """(loaded model, path): DoReFa W4A4 with calibrated clipping ranges, first conv and fc in float,
    fine-tuned 15 steps."""
    return _compressed(float_digits_resnet, {"method": "dorefa", "keep_first_last": True, "params": {
        "weight_bits": 4, "act_bits": 4, "act_range": "calibrate"}}, tmp_path_factory, "w4a4",
        ["train.epochs=1", "train.max_steps_per_epoch=15", "train.optimizer=adam", "train.lr=0.001",
         "train.weight_decay=0.0"], train_data=_batches("train", 32, train=True))


@pytest.fixture(scope="session")
def weight_only_digits(float_digits_resnet, tmp_path_factory):
    """(loaded model, path): 5-level pow2 weights {0, +-a, +-2a} (L-DNQ's levels, rounded to nearest, a per
    filter) on every conv but the first, float activations: a weight-only model, built directly."""
    import copy

    from deepshrink.nn import EncodedWeight, compress_layer, set_module

    model = copy.deepcopy(float_digits_resnet)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]
    for name, conv in convs:
        weight = conv.weight.detach()
        alpha = weight.abs().amax(dim=(1, 2, 3)) / 2  # (out,)
        steps = torch.clamp(torch.round(weight / alpha.reshape(-1, 1, 1, 1)), -2, 2)  # in {0, +-1, +-2}
        set_module(model, name, compress_layer(conv, EncodedWeight(
            "pow2", weight.shape, codes=steps.to(torch.int8), levels=5, params={"alpha": alpha})))
    path = tmp_path_factory.mktemp("runtime") / "pow2.dsz"
    deepshrink.pack(model.eval(), path)
    return deepshrink.load(path).eval(), path


@pytest.fixture
def ttq_without_int8_ratio(tmp_path):
    """Path of a packed LeNet-300 (8x8 inputs) whose fc2 has ternary weights with two scales 1000:1 apart:
    no ratio of int8 integers reaches it, so the integer engine cannot run it."""
    from deepshrink.nn import EncodedWeight, compress_layer, set_module

    model = deepshrink.create_model("lenet300", input_size=8)
    fc2 = model.fc2
    codes = fc2.weight.detach().sign().to(torch.int8)
    set_module(model, "fc2", compress_layer(fc2, EncodedWeight("ternary", fc2.weight.shape, codes=codes, params={
        "pos_scale": torch.tensor([1.0]), "neg_scale": torch.tensor([1e-3])})))
    deepshrink.pack(model.eval(), tmp_path / "ttq.dsz")
    return tmp_path / "ttq.dsz"
