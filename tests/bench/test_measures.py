"""Named row measures: each figure against an independent computation, on a tiny real model."""
from __future__ import annotations

import json
import math

import pytest
import torch

import deepshrink
from deepshrink.bench import load_suite
from deepshrink.bench.measures import (MEASURES, MeasureContext, agreement_and_sqnr, check_measures, logits_of,
                                       peak_rss_mib, reset_peak_rss, run_measures, start_measures)
from deepshrink.errors import UserError


@pytest.fixture(scope="module")
def tiny():
    """LeNet-5 with fixed random weights and 64 random 28x28 images in batches of 16. Without biases its
    predictions vary with the input (the biases of an untrained net decide them alone)."""
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5").eval()
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            torch.nn.init.zeros_(module.bias)
    batches = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.int64)) for _ in range(4)]
    return model, batches


def _context(model, base, batches, tmp_path, started=None):
    return MeasureContext(lambda: model, tmp_path, lambda: base, lambda: batches, started=started)


def test_agreement_and_sqnr_match_their_definitions():
    reference = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]])
    noisy = reference + torch.tensor([[0.0, 2.5, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.0, 0.0]])
    agreement, sqnr = agreement_and_sqnr(reference, noisy)
    assert agreement == 50.0  # rows 0 and 3 change their argmax
    signal, noise = (reference ** 2).sum().item(), 2.5 ** 2 + 0.5 ** 2 + 1.0 ** 2
    assert sqnr == pytest.approx(10 * math.log10(signal / noise))
    assert agreement_and_sqnr(reference, reference.clone()) == (100.0, math.inf)


def test_fidelity_of_the_unchanged_packed_model_is_exact(tiny, tmp_path):
    model, batches = tiny
    deepshrink.pack(model, tmp_path / "model.dsz")  # fp32: the file gives back the same weights
    reloaded = deepshrink.load(tmp_path / "model.dsz")
    figures = run_measures(["fidelity"], _context(reloaded, model, batches, tmp_path))
    assert figures == {"top1_agreement": 100.0, "logit_sqnr_db": None, "identical_logits": True,
                       "fidelity_images": 64}


def test_fidelity_of_a_quantized_model_is_lower(tiny, tmp_path):
    model, batches = tiny
    result = deepshrink.compress(model, "ldnq_rtn", calib_data=batches, overrides=["params.levels=3"])
    deepshrink.pack(result.model, tmp_path / "model.dsz")
    reloaded = deepshrink.load(tmp_path / "model.dsz")
    figures = run_measures(["fidelity"], _context(reloaded, model, batches, tmp_path))
    expected = agreement_and_sqnr(logits_of(model, batches), logits_of(reloaded, batches))
    assert figures["top1_agreement"] == round(expected[0], 2) and figures["logit_sqnr_db"] == round(expected[1], 2)
    assert figures["top1_agreement"] < 100 and 0 < figures["logit_sqnr_db"] < 60
    assert "identical_logits" not in figures


def test_peak_rss_is_reset_when_a_row_starts_and_covers_its_allocations(tmp_path):
    ballast = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB resident before the row
    del ballast
    started = start_measures(["peak_rss"])
    assert started == {"peak_rss": "row"}  # Linux: /proc/self/clear_refs resets the high-water mark
    assert reset_peak_rss() == "row"
    before = peak_rss_mib()
    row = torch.ones(96 << 20, dtype=torch.uint8)  # the row's own 96 MiB
    del row
    figures = run_measures(["peak_rss"], _context(None, None, [], tmp_path, started))
    assert figures["peak_rss_scope"] == "row"
    assert before + 90 <= figures["peak_rss_mb"] < before + 200


def test_layer_measures_read_the_drivers_report(tiny, tmp_path):
    model, batches = tiny
    result = deepshrink.compress(model, "ldnq_rtn", calib_data=batches, overrides=["params.levels=5"])
    report = result.model.deepshrink_report
    (tmp_path / "layers.json").write_text(json.dumps(report, default=float))
    figures = run_measures(["layer_seconds", "bits_per_weight"], _context(None, None, [], tmp_path))
    assert figures["layer_seconds"] == round(sum(r["seconds"] for r in report["layers"].values()), 1)
    assert figures["compressed_layers"] == 3  # conv2, fc1, fc2: keep_first_last leaves conv1 and fc3 float
    assert figures["bits_per_weight"] == round(report["bits_per_weight"], 3) and figures["bits_per_weight"] < 8
    assert figures["slowest_layer"].split(" (")[0] in report["layers"]
    assert run_measures(["layer_seconds"], _context(None, None, [], tmp_path / "none")) == {}  # not layer-wise


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_every_measure_declares_headings_for_its_figures(name):
    measure = MEASURES[name]
    assert measure.doc and measure.figures
    for heading, fmt in measure.figures.values():
        assert isinstance(heading, str) and (callable(fmt) or "{" in fmt)


@pytest.mark.parametrize("where", ["suite", "row"])
def test_an_unknown_measure_is_one_line_naming_the_registered_ones(where):
    suite = {"model": {"name": "lenet5"}, "data": {"name": "digits"}, "rows": [{"method": "bwn"}]}
    if where == "suite":
        suite["measures"] = ["fidelity", "latncy"]
    else:
        suite["rows"][0]["measures"] = ["latncy"]
    with pytest.raises(UserError) as info:
        load_suite(suite)
    message = str(info.value)
    assert "\n" not in message and "'latncy'" in message and "registered: " in message and "fidelity" in message
    if where == "row":
        assert "rows[0]" in message
    with pytest.raises(UserError, match="must be a list of names"):
        check_measures("fidelity", "suite")


def test_load_average_is_read_when_the_row_starts_and_ends(tmp_path):
    started = start_measures(["load_average"])
    figures = run_measures(["load_average"], _context(None, None, [], tmp_path, started))
    start, end = figures["load_average"]
    assert start == started["load_average"] and start >= 0 and end >= 0
    assert MEASURES["load_average"].figures["load_average"][1]({"load_average": [1.234, 2.0]}) == "1.2→2.0"
