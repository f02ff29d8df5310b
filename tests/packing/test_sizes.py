"""One size rule: the bytes an encoding says the packer writes are the bytes in the file, for one layer of
every kind under every packing option, and the size analysis and the layer-wise driver report the same."""
import pytest
import torch
from conftest import encodings_for
from torch import nn

import deepshrink
from deepshrink.analysis import storage_bytes
from deepshrink.encodings import kinds
from deepshrink.nn import compress_layer
from deepshrink.packing import save
from deepshrink.packing.format import FLOAT_DTYPES

WEIGHTS = encodings_for(torch.randn(16, 16, 3, 3), torch.Generator().manual_seed(0))
OPTIONS = [{}, {"float_dtype": "fp16", "ternary_base3": True}, {"float_dtype": "bf16"}]


def test_the_examples_cover_every_registered_kind():
    found = {w.kind for w in WEIGHTS.values()} | {w.inner.kind for w in WEIGHTS.values() if w.inner is not None}
    assert found == set(kinds())


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())) or "default")
def test_estimate_equals_the_packed_bytes_of_one_layer_of_every_kind(options, tmp_path):
    for name, weight in WEIGHTS.items():
        model = nn.Sequential(compress_layer(nn.Conv2d(16, 16, 3, bias=False), weight))
        report = save(model, tmp_path / f"{name}.dsz", **options)
        row = next(row for row in report["layers"] if row["name"] == "0")
        estimate = weight.packed_bits(FLOAT_DTYPES[options.get("float_dtype", "fp32")],
                                      options.get("ternary_base3", False))
        assert estimate == 8 * row["bytes"], name


def test_entropy_coding_never_exceeds_the_estimate(tmp_path):
    for name, weight in WEIGHTS.items():
        model = nn.Sequential(compress_layer(nn.Conv2d(16, 16, 3, bias=False), weight))
        row = next(row for row in save(model, tmp_path / "e.dsz", entropy=True)["layers"] if row["name"] == "0")
        assert 8 * row["bytes"] <= weight.packed_bits(), name


def test_size_analysis_counts_the_packed_bytes_of_every_layer(tmp_path):
    for name, weight in WEIGHTS.items():
        model = nn.Sequential(compress_layer(nn.Conv2d(16, 16, 3, bias=True), weight))  # a float bias beside
        row = next(row for row in save(model, tmp_path / "a.dsz")["layers"] if row["name"] == "0")
        assert storage_bytes(model[0]) == row["bytes"], name


@pytest.mark.parametrize("recipe", [{"method": "magnitude", "params": {"sparsity": 0.6}},
                                    {"method": "ldnq_rtn", "params": {"levels": 3, "sparsity": 0.5}},
                                    {"method": "pq", "params": {"n_centroids": 8}}])
def test_layerwise_report_counts_the_packed_bytes(recipe, tmp_path):
    model = deepshrink.create_model("lenet5").eval()
    calib = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = deepshrink.compress(model, recipe, calib_data=calib)
    layers = result.model.deepshrink_report["layers"]
    rows = {row["name"]: row for row in save(result.model, tmp_path / "m.dsz")["layers"]}
    assert layers
    for name, entry in layers.items():
        bias = result.model.get_submodule(name).bias
        encoded_bytes = rows[name]["bytes"] - (0 if bias is None else bias.numel() * 4)
        assert entry["bits_per_weight"] * entry["numel"] == pytest.approx(8 * encoded_bytes, abs=1e-6), name
