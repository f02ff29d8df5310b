"""The study measures (bench.measures_studies): each figure against an independent computation, its report
column, and the shipped suites that use them; tiny suites of each shape run end to end."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import deepshrink
from deepshrink.analysis import profile
from deepshrink.bench import load_suite, plan_rows, read_results, run_suite
from deepshrink.bench import measures_studies as studies
from deepshrink.bench.measures import MEASURES, MeasureContext
from deepshrink.bench.report import render_markdown
from deepshrink.errors import UserError


def _batches(n_batches=3, size=8, channels=3, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, channels, side, side, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n_batches)]


def _never():
    raise AssertionError("a study measure read the test images; it must read validation")


def _context(model, base, val, tmp_path):
    return MeasureContext(lambda: model, tmp_path, lambda: base, _never, val_batches=lambda: val)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", shortcut="B").eval()
    for module in model.modules():  # BatchNorm statistics that are not the identity, so folding has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def test_first_images_takes_the_count_across_batches():
    batches = _batches()
    images = studies.first_images(batches, 11)
    assert torch.equal(images, torch.cat([batches[0][0], batches[1][0][:3]]))


def test_macs_executed_counts_what_an_fbs_model_runs_on_validation_images(resnet, tmp_path):
    from deepshrink.config import load_recipe, select_layers
    from deepshrink.prune.fbs import apply_fbs, convert_fbs
    from deepshrink.prune.fbs_gate import calibrate_predictors

    val = _batches(side=32)
    gated = copy.deepcopy(resnet)
    apply_fbs(gated, {n: 0.5 for n in select_layers(gated, load_recipe("fbs"))})
    calibrate_predictors(gated, val, 2)
    gated = convert_fbs(gated.eval())
    figures = MEASURES["macs_executed"].measure(_context(gated, resnet, val, tmp_path))
    images = torch.cat([x for x, _ in val])
    assert figures["macs_images"] == 24
    assert figures["macs_executed"] == profile(gated, inputs=images).totals["macs"]
    assert figures["macs_executed_dense"] == profile(resnet, inputs=images).totals["macs"]
    assert figures["macs_executed_ratio"] == pytest.approx(figures["macs_executed_dense"] / figures["macs_executed"],
                                                           abs=1e-3)
    assert figures["macs_executed_ratio"] > 1.5  # half the channels of every gated conv skipped


def test_folding_batchnorm_keeps_the_function_and_leaves_no_batchnorm(resnet):
    folded = studies.fold_all_bn(resnet)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), resnet(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in resnet.modules())  # the original is untouched


def test_batch1_latency_times_five_models_on_one_thread_and_restores_the_threads(resnet, tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "LATENCY_ROUNDS", 3)
    threads = torch.get_num_threads()
    figures = MEASURES["batch1_latency"].measure(_context(copy.deepcopy(resnet), resnet, _batches(side=32), tmp_path))
    ms = figures["batch1_latency_ms"]
    assert set(ms) == {"dense", "dense_bn_folded", "dense_compiled", "row_eager", "row_compiled"}
    assert all(v > 0 for v in ms.values())
    assert figures["latency_speedup"]["vs_dense"] == pytest.approx(ms["dense"] / ms["row_compiled"], rel=1e-2)
    assert (figures["latency_threads"], figures["latency_rounds"]) == (1, 3)
    assert torch.get_num_threads() == threads


def test_train_bn_top1_scores_validation_with_batch_statistics_and_leaves_the_model(resnet, tmp_path):
    val = _batches(n_batches=4, side=32)
    before = [m.running_mean.clone() for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    figures = MEASURES["train_bn_top1"].measure(_context(resnet, resnet, val, tmp_path))
    inputs, labels = torch.cat([x for x, _ in val]), torch.cat([y for _, y in val])
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(resnet).train()
    with torch.no_grad():  # one batch: all 32 images fit in a batch of 500
        expected = 100.0 * (model(inputs[order]).argmax(1) == labels[order]).double().mean().item()
    assert figures == {"train_bn_top1": round(expected, 2), "train_bn_images": 32}
    after = [m.running_mean for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after)) and not resnet.training


def test_val_curve_reads_the_runs_validation_top1_per_epoch(tmp_path):
    ctx = _context(None, None, [], tmp_path)
    assert MEASURES["val_curve"].measure(ctx) == {}  # a row that did not train
    (tmp_path / "train").mkdir()
    lines = [{"epoch": 1, "val_top1": 71.234, "train_loss": 1.0}, {"epoch": 2, "val_top1": 80.5}]
    (tmp_path / "train" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert MEASURES["val_curve"].measure(ctx) == {"val_top1_per_epoch": [71.23, 80.5]}


def test_the_study_figures_are_report_columns():
    record = {"key": "k", "label": "FBS", "method": "fbs", "status": "ok", "top1": 80.0, "bytes": 1000, "ratio": 4.0,
              "macs_executed": 20_000_000, "macs_executed_ratio": 2.04, "train_bn_top1": 61.5,
              "val_top1_per_epoch": [70.0, 75.5],
              "batch1_latency_ms": {"dense": 2.5, "dense_bn_folded": 2.2, "dense_compiled": 1.9, "row_eager": 1.7,
                                    "row_compiled": 1.3},
              "latency_speedup": {"vs_dense": 1.92, "vs_dense_bn_folded": 1.69, "vs_dense_compiled": 1.46,
                                  "eager_vs_dense": 1.47}}
    report = render_markdown([record])
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    for heading in ("MACs run/image", "MACs fewer x", "val top-1, train-mode BN", "val top-1 by epoch",
                    "batch-1 ms (compiled)", "x faster than dense (compiled dense)"):
        assert heading in header
    assert "20,000,000" in report and "70.0 → 75.5" in report and "1.70 (1.30)" in report and "1.92x (1.46x)" in report


def test_a_misspelt_study_measure_is_one_line():
    suite = {"name": "s", "model": {"name": "lenet5"}, "data": {"name": "digits"}, "rows": ["bwn"],
             "measures": ["val_curves"]}
    with pytest.raises(UserError) as info:
        load_suite(suite)
    assert "unknown measure(s) ['val_curves']" in str(info.value) and "val_curve" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_shipped_study_suites_keep_the_scripts_settings():
    fbs = load_suite("fbs-cifar10")
    assert list(fbs.measures)[:2] == ["macs_executed", "batch1_latency"]
    rows = plan_rows(fbs, "b")
    assert all(r.error is None for r in rows)
    assert [r.recipe["train"]["epochs"] for r in rows[1:]] == [0, 2, 6, 14, 30]
    assert [r.recipe["train"]["distill"] for r in rows[1:]] == [0, 0, 1.0, 1.0, 1.0]
    assert {r.recipe["params"]["keep_ratio"] for r in rows[1:]} == {0.5}
    lsq = plan_rows(load_suite("lsq-act-init"), "b")
    assert [(r.recipe["params"]["weight_bits"], r.recipe["params"]["act_bits"], r.recipe["params"]["act_init"])
            for r in lsq[1:]] == [(2, 32, "paper"), (32, 2, "paper"), (32, 2, "mse"), (2, 2, "paper"), (2, 2, "mse"),
                                  (3, 32, "paper"), (32, 3, "paper"), (32, 3, "mse")]
    assert all(r.recipe["train"]["epochs"] == 0 for r in lsq[1:]) and all("train_bn_top1" in r.measures for r in lsq)
    for name in ("metaquant-fmnist", "metaquant-fmnist-bn"):
        suite = load_suite(name)
        rows = plan_rows(suite, "b")
        assert suite.base["train"]["epochs"] == 1 and all(r.error is None for r in rows)
        assert all(r.recipe["train"]["epochs"] == 2 and not r.recipe["train"]["augment"] for r in rows[1:])
        assert sorted(r.recipe["train"]["seed"] for r in rows[1:]) == [0] * (len(rows) // 2) + [1] * (len(rows) // 2)
        assert all("val_curve" in r.measures for r in rows)


def _digits_suite(rows, measures, model=None, base=None, train=None):
    return {"name": "digits-study", "model": model or {"name": "resnet20", "args": {"shortcut": "B"}},
            "data": {"name": "digits"}, "base": base or {"checkpoint": None}, "seed": 0,
            "budget": train or {"epochs": 0, "batch_size": 32}, "measures": measures, "rows": rows}


@pytest.fixture(scope="module")
def digits_resnet(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet20-digits.pt"
    torch.save(deepshrink.create_model("resnet20", shortcut="B", in_channels=1).state_dict(), path)
    return path


def test_an_init_only_lsq_suite_scores_its_quantizers_on_validation(tmp_path, digits_resnet):
    suite = load_suite(_digits_suite([{"method": "lsq", "set": ["params.weight_bits=2", "params.act_bits=2"]}],
                                     ["train_bn_top1"], base={"checkpoint": str(digits_resnet)}))
    out = tmp_path / "out"
    assert run_suite(suite, out, log=lambda m: None)["failed"] == 0
    fp, lsq = read_results(out / "results.jsonl")
    assert lsq["epochs"] == 0 and lsq["train_bn_images"] == fp["train_bn_images"]
    from deepshrink.pipeline import build_data

    val = build_data("digits").val
    assert lsq["train_bn_images"] == len(val.dataset)  # the validation part, not the test split
    model = deepshrink.load(next((out / "rows").glob("lsq-*")) / "model.dsz")
    expected = studies.train_bn_accuracy(model, studies.shuffled_batches(val, 500))
    assert lsq["train_bn_top1"] == expected and fp["train_bn_top1"] != lsq["train_bn_top1"]


def test_an_fbs_suite_records_macs_run_and_latency(tmp_path, digits_resnet, monkeypatch):
    monkeypatch.setattr(studies, "LATENCY_ROUNDS", 3)
    suite = load_suite(_digits_suite([{"method": "fbs", "recipe": "fbs"}], ["macs_executed", "batch1_latency"],
                                     base={"checkpoint": str(digits_resnet)}))
    out = tmp_path / "out"
    assert run_suite(suite, out, log=lambda m: None)["failed"] == 0
    fp, fbs = read_results(out / "results.jsonl")
    assert fp["macs_executed_ratio"] == 1.0 and fbs["macs_executed_ratio"] > 1.5
    assert fbs["batch1_latency_ms"]["row_compiled"] > 0 and fbs["latency_rounds"] == 3


def test_a_meta_quant_suite_trains_its_base_and_records_the_validation_curve(tmp_path):
    suite = load_suite(_digits_suite([{"method": "bwn"}], ["val_curve"],
                                     model={"name": "lenet300", "args": {"input_size": 8}},
                                     base={"train": {"epochs": 1, "lr": 0.05, "batch_size": 64}},
                                     train={"epochs": 2, "lr": 0.01, "batch_size": 64}))
    out = tmp_path / "out"
    assert run_suite(suite, out, log=lambda m: None)["failed"] == 0
    fp, bwn = read_results(out / "results.jsonl")
    assert "val_top1_per_epoch" not in fp  # the full-precision row does not train
    run = next((out / "rows").glob("bwn-*")) / "train" / "metrics.jsonl"
    curve = [round(json.loads(line)["val_top1"], 2) for line in run.read_text().splitlines()]
    assert len(curve) == 2 and bwn["val_top1_per_epoch"] == curve
