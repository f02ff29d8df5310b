"""Every layer-wise method on real data (sklearn digits, a small CNN trained here): each beats its naive
baseline at the same budget, converts to packable layers, and runs on depthwise / user-defined modules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.data import get_dataset
from deepshrink.nn import CompressedConv2d, CompressedLinear


class DigitsNet(nn.Module):
    """A user-defined module (not from the model registry), with a depthwise conv in it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc1 = nn.Linear(16 * 16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.conv3(F.relu(self.dw(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(one_thread):
    """(model trained to > 90% test accuracy, calibration batches, test inputs, test labels)."""
    ds = get_dataset("digits", "train")
    test = get_dataset("digits", "test")

    def normalise(images):
        return (images.float() / 255 - ds.mean[0]) / ds.std[0]

    x, y = normalise(ds.images), ds.targets
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        for idx in torch.randperm(len(y)).split(100):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    calib = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    tx, ty = normalise(test.images), test.targets
    assert (model(tx).argmax(1) == ty).float().mean() > 0.9
    return model, calib, tx, ty


def _score(model, reference, tx, ty):
    with torch.no_grad():
        out, ref = model(tx), reference(tx)
    return (out - ref).pow(2).mean().item(), (out.argmax(1) == ty).float().mean().item()


PAIRS = [
    ({"method": "lobs", "params": {"sparsity": 0.8}}, {"method": "magnitude", "params": {"sparsity": 0.8}}),
    ({"method": "lobs", "params": {"sparsity": 0.8, "mode": "one_shot", "scope": "global"}},
     {"method": "magnitude", "params": {"sparsity": 0.8, "scope": "global"}}),
    ({"method": "ldnq", "params": {"levels": 3}}, {"method": "ldnq_rtn", "params": {"levels": 3}}),
    ({"method": "ldnq", "params": {"levels": 5, "sparsity": 0.6}},
     {"method": "ldnq_rtn", "params": {"levels": 5, "sparsity": 0.6}}),
    ({"method": "pq", "params": {"n_centroids": 8, "layer_finetune_steps": 8, "layer_finetune_lr": 1e-3}},
     {"method": "kmeans", "params": {"n_centroids": 8}}),
]


@pytest.mark.parametrize("recipe,baseline", PAIRS, ids=lambda r: str(r["params"]) if "method" in r else "")
def test_method_beats_its_baseline_on_digits(digits, recipe, baseline):
    model, calib, tx, ty = digits
    result = deepshrink.compress(model, recipe, calib_data=calib)
    base = deepshrink.compress(model, baseline, calib_data=calib)
    err, acc = _score(result.model, model, tx, ty)
    base_err, base_acc = _score(base.model, model, tx, ty)
    assert err < base_err  # strictly closer to the original network's outputs
    assert acc >= base_acc - 0.02  # and no worse in accuracy beyond 7 of the 360 test images
    report = result.model.deepshrink_report
    assert report["bits_per_weight"] == pytest.approx(base.model.deepshrink_report["bits_per_weight"], rel=0.05)
    assert set(report["layers"]) == {"conv2", "dw", "conv3", "fc1"}  # first conv and last fc kept


def test_convert_gives_packable_layers_whose_decoded_weight_is_the_solution(digits):
    model, calib, tx, ty = digits
    result = deepshrink.compress(model, {"method": "ldnq", "params": {"levels": 3, "sparsity": 0.5}}, calib_data=calib)
    out = result.model
    assert isinstance(out.dw, CompressedConv2d) and isinstance(out.fc1, CompressedLinear)
    assert isinstance(out.conv1, nn.Conv2d) and not isinstance(out.conv1, CompressedConv2d)
    enc = out.conv2.encoded
    assert enc.kind == "sparse" and enc.inner.kind == "pow2" and enc.inner.levels == 3
    assert enc.mask.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert out.conv2.weight.unique().numel() <= 1 + 2 * 16  # 0 and ±alpha per output channel
    bits = out.deepshrink_report["layers"]["conv2"]["bits_per_weight"]
    assert 1 < bits < 3  # 1-bit mask + 2-bit codes at half the weights + per-channel alphas


def test_pq_fusion_keeps_the_architecture_and_original_inputs_option(digits):
    model, calib, tx, ty = digits
    fused = deepshrink.compress(model, {"method": "pq", "params": {"n_centroids": 16, "fuse_bn": True}},
                                calib_data=calib)
    assert isinstance(fused.model.bn2, nn.BatchNorm2d) and fused.model.conv2.bias is None
    plain = deepshrink.compress(model, {"method": "pq", "params": {"n_centroids": 16, "inputs": "original"}},
                                calib_data=calib)
    for result in (fused, plain):
        assert _score(result.model, model, tx, ty)[1] > 0.8


def test_pq_global_finetune_trains_codebooks_through_the_one_training_loop(digits, tmp_path):
    model, calib, tx, ty = digits
    recipe = {"method": "pq", "params": {"n_centroids": 8, "finetune_epochs": 1, "finetune_lr": 1e-3},
              "train": {"epochs": 1, "max_steps_per_epoch": 4, "batch_size": 50, "log_every": 1000}}
    tuned = deepshrink.compress(model, recipe, calib_data=calib, train_data=calib, out_dir=tmp_path)
    plain = deepshrink.compress(model, {**recipe, "params": {"n_centroids": 8}}, calib_data=calib)
    book, book0 = tuned.model.conv2.encoded.params["codebook"], plain.model.conv2.encoded.params["codebook"]
    assert book.shape == book0.shape and not torch.equal(book, book0)
    torch.testing.assert_close(tuned.model.conv2.weight, tuned.model.conv2.encoded.dequantize())
    assert _score(tuned.model, model, tx, ty)[1] > 0.8


def test_pq_global_distillation_on_calibration_data_moves_closer_to_the_original(digits):
    """Global fine-tuning by distillation uses only the calibration batches and lowers the output error
    on held-out images; the codebook stays a codebook (decoded weight == the packed layer's weight)."""
    model, calib, tx, ty = digits
    plain = deepshrink.compress(model, {"method": "pq", "params": {"n_centroids": 4}}, calib_data=calib)
    tuned = deepshrink.compress(model, {"method": "pq", "params": {"n_centroids": 4, "global_distill_steps": 40,
                                                                   "global_distill_lr": 1e-3}}, calib_data=calib)
    assert _score(tuned.model, model, tx, ty)[0] < _score(plain.model, model, tx, ty)[0]
    torch.testing.assert_close(tuned.model.conv2.weight, tuned.model.conv2.encoded.dequantize())
    assert tuned.model.conv2.encoded.params["codebook"].shape == plain.model.conv2.encoded.params["codebook"].shape


def test_pq_labelled_finetune_can_add_the_teachers_distillation_term(digits, tmp_path):
    import json

    model, calib, tx, ty = digits
    recipe = {"method": "pq", "params": {"n_centroids": 8, "finetune_epochs": 1, "finetune_lr": 1e-3,
                                         "finetune_distill": 1.0},
              "train": {"epochs": 1, "max_steps_per_epoch": 4, "batch_size": 50, "log_every": 1000}}
    tuned = deepshrink.compress(model, recipe, calib_data=calib, train_data=calib, out_dir=tmp_path)
    epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch["train_extra_loss"] > 0  # KL(original || compressed) of a 3-bit-per-block network
    assert _score(tuned.model, model, tx, ty)[1] > 0.8
