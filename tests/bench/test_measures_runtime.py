"""The run-time measures (`speed`, `resident_memory`, `engine_agreement`, `bit_kernels`) on a small W4A4
ResNet on scikit-learn's digits: each record's fields against an independent computation, their report
columns, the settings' one-line errors."""
from __future__ import annotations

import copy

import pytest
import torch

import deepshrink
from deepshrink.bench import load_suite
from deepshrink.bench.measures import MeasureContext, run_measures
from deepshrink.bench.measures_runtime import resident_copies, run_resident_copies
from deepshrink.bench.report import markdown_table
from deepshrink.data import get_dataset, make_loader
from deepshrink.errors import UserError


def _batches(split: str, count: int, batch_size: int):
    images, labels = next(iter(make_loader(get_dataset("digits", split), count, train=False)))
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, count, batch_size)]


@pytest.fixture(scope="module")
def w4a4(tmp_path_factory):
    """(row folder holding model.dsz, float base, eval batches, calibration batches): a random ResNet-20 for
    1x8x8 digits, DoReFa W4A4 with calibrated activation ranges after 2 training steps, packed."""
    torch.manual_seed(0)
    base = deepshrink.create_model("resnet20", num_classes=10, in_channels=1, shortcut="B").eval()
    train = _batches("train", 64, 32)
    result = deepshrink.compress(copy.deepcopy(base), {"method": "dorefa", "keep_first_last": True, "params": {
        "weight_bits": 4, "act_bits": 4, "act_range": "calibrate"}},
        overrides=["train.epochs=1", "train.max_steps_per_epoch=2"], train_data=train, calib_data=train)
    row = tmp_path_factory.mktemp("row")
    deepshrink.pack(result.model.eval(), row / "model.dsz")
    return row, base, _batches("test", 96, 32), train


def _measure(w4a4, settings: dict) -> dict:
    """run_measures on the W4A4 row: `settings` is {measure: its settings}, as a suite's `measures:` gives it."""
    row, base, evaluation, calibration = w4a4
    context = MeasureContext(lambda: deepshrink.load(row / "model.dsz"), row, lambda: base, lambda: evaluation,
                             calib_batches=lambda: calibration)
    return run_measures(settings, context)


def _top1(model, batches) -> float:
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return round(100.0 * correct / sum(len(y) for _, y in batches), 2)


def test_speed_records_each_engine_beside_the_base_and_issue21_ratios(w4a4):
    settings = {"speed": {"batches": [1, 2], "threads": [1], "rounds": 2, "engines": ["torch-eager", "onnxruntime-int8"],
                          "references": ["torch-fp32"]}}
    record = _measure(w4a4, settings)
    rows = record["speed_rows"]
    assert [(r.get("model", ""), r["engine"], r["batch"]) for r in rows] == [
        ("", "torch-eager", 1), ("", "torch-eager", 2), ("", "onnxruntime-int8", 1), ("", "onnxruntime-int8", 2),
        ("base", "torch-fp32", 1), ("base", "torch-fp32", 2)]
    assert all({"engine", "batch", "threads", "median_ms", "iqr_ms", "resident_bytes", "top1"} <= set(r) for r in rows)
    row, base, evaluation, _ = w4a4
    eager = next(r for r in rows if r["engine"] == "torch-eager")
    assert eager["top1"] == _top1(deepshrink.load(row / "model.dsz").eval(), evaluation)  # the file's top-1
    assert rows[-1]["top1"] == _top1(base, evaluation)
    engine = {r["batch"]: r for r in rows if r["engine"] == "onnxruntime-int8"}
    assert record["speed_engine"] == "onnxruntime-int8" and record["engine_top1"] == engine[1]["top1"]
    assert record["engine_ms"] == {"1×1": engine[1]["median_ms"], "2×1": engine[2]["median_ms"]}
    base_ms = {r["batch"]: r["median_ms"] for r in rows if r.get("model") == "base"}
    assert record["speedup_vs_torch_fp32"] == {f"batch{b}": round(base_ms[b] / engine[b]["median_ms"], 2)
                                               for b in (1, 2)}
    assert "speedup_vs_onnxruntime_fp32" not in record  # no such reference measured
    assert record["speed_setup"]["calibration_images"] == 64 and record["speed_setup"]["input_shape"] == [1, 8, 8]
    assert record["speed_skipped"] == {}  # both engines asked for run the model
    table = markdown_table([{"key": "r", "method": "dorefa", "label": "W4A4", "status": "ok", **record}])
    assert "| run-time engine | top-1 on it % | its ms (batch×threads) | × PyTorch fp32 |" in table
    ratio = record["speedup_vs_torch_fp32"]
    assert f"| b1 {ratio['batch1']:.2f}, b2 {ratio['batch2']:.2f} |" in table


def test_resident_memory_loads_copies_in_a_fresh_process(w4a4):
    from deepshrink.nn import tensor_nbytes
    from deepshrink.packing.format import read_container

    row = w4a4[0]
    record = _measure(w4a4, {"resident_memory": {"copies": 2, "modes": ["resident"]}})
    _, blobs, file_bytes = read_container(row / "model.dsz")
    payload = sum(b.numel() * b.element_size() for b in blobs.values())
    resident = record["resident_memory"]["resident"]
    assert resident["file_bytes"] == file_bytes and resident["payload_bytes"] == payload
    assert resident["tensor_bytes"] == tensor_nbytes(deepshrink.load(row / "model.dsz"))
    assert record["tensor_over_payload"] == round(resident["tensor_bytes"] / payload, 3)
    assert set(record["rss_per_copy_over_file"]) == {"resident"}
    assert all(f["copies"] == 2 and f["rss_per_copy"] > 0 for f in record["resident_memory"].values())
    table = markdown_table([{"key": "r", "method": "dorefa", "label": "W4A4", "status": "ok", **record}])
    assert "| tensors / payload | RSS per copy / file |" in table and "resident " in table
    # the child's figures are the in-process function's, run where nothing else is loaded
    assert set(resident) == set(resident_copies(str(row / "model.dsz"), 1, "resident", [1, 8, 8]))
    with pytest.raises(RuntimeError, match=r"resident_memory child \(frozen\) failed"):
        run_resident_copies(row / "missing.dsz", 1, "frozen", [1, 8, 8])


def test_engine_agreement_with_zero_noise_is_the_file_exactly(w4a4):
    from deepshrink.runtime.qdq import quantizer_noise

    record = _measure(w4a4, {"engine_agreement": {"noise": 0.0, "seeds": 2}})
    row, _, evaluation, _ = w4a4
    model = deepshrink.load(row / "model.dsz").eval()
    assert record["agreement_top1_file"] == _top1(model, evaluation) and record["agreement_images"] == 96
    assert record["perturbed"] == [{"top1": record["agreement_top1_file"], "delta": 0.0, "disagree_pct": 0.0}] * 2
    assert record["perturbed_delta_mean"] == 0.0 and record["perturbed_delta_sd"] == 0.0
    assert record["engine_minus_perturbed_mean"] == record["engine_delta"] == record["engine"]["delta"]
    images = torch.cat([x for x, _ in evaluation])
    with torch.no_grad():
        want = model(images)
        with quantizer_noise(model, 0.0, seed=1):
            assert torch.equal(model(images), want)
        with quantizer_noise(model, 0.5, seed=1):  # the path that perturbs does perturb
            assert not torch.equal(model(images), want)


def test_engine_agreement_perturbs_the_file_with_noise(w4a4):
    record = _measure(w4a4, {"engine_agreement": {"noise": 0.5, "seeds": 2}})
    assert any(copy_["disagree_pct"] > 0 for copy_ in record["perturbed"])
    deltas = [c["delta"] for c in record["perturbed"]]
    assert record["perturbed_delta_mean"] == round(sum(deltas) / 2, 3)
    table = markdown_table([{"key": "r", "method": "dorefa", "label": "W4A4", "status": "ok", **record}])
    assert "| int8 engine Δ top-1 | perturbed file Δ top-1 | engine − perturbed |" in table


def test_bit_kernels_time_each_shape_on_the_kernel_the_engine_runs(w4a4):
    from deepshrink import kernels

    if kernels.native() is None:
        pytest.skip(f"the bit kernels do not build here: {kernels.unavailable_reason()}")
    settings = {"bit_kernels": {"rounds": 1, "shapes": [[16, 4]], "ternary_shapes": [[16, 4]]}}
    section = _measure(w4a4, settings)["bit_kernels"]
    assert set(section["layers"]) == {"16->16 4x4", "ternary x binary 16->16 4x4"}
    for layer in section["layers"].values():
        assert {"torch-fp32", "ort-int8"} <= set(layer["median_us"])
        assert layer["engine_kernel"] in layer["median_us"] and layer["engine_kernel"].startswith(section["paths"][0])
    assert set(section["targets"]) == {f"ternary x binary 16->16 4x4, {section['layers']['ternary x binary 16->16 4x4']['engine_kernel']} vs {b} >= {t}x"
                                       for b, t in (("torch-fp32", 5.0), ("ort-int8", 1.5))}
    assert section["row"]["refused"].startswith("no layer has binary or ternary weights")  # a W4A4 model
    table = markdown_table([{"key": "r", "method": "xnor", "label": "X", "status": "ok", "bit_kernels": section}])
    met = sum(t["met"] for t in section["targets"].values())
    assert "| bit-kernel targets met |" in table and f"| {met}/2 |" in table


def _suite(entry) -> dict:
    """A suite measuring speed and resident memory on every row and bit kernels on one, `entry` among its measures."""
    return {"model": {"name": "resnet20"}, "data": {"name": "digits"},
            "measures": ["speed", "resident_memory"] + ([entry] if entry is not None else []),
            "rows": [{"method": "bwn", "measures": ["bit_kernels"]}]}


@pytest.mark.parametrize("entry, words", [
    ({"sped": {}}, "unknown measure(s) ['sped']"),
    ({"speed": {"batch": [1]}}, "measure 'speed': unknown setting(s) ['batch']; allowed:"),
    ({"speed": [1, 64]}, "`measures:` must be a list of names"),
    ({"speed": {"batches": [0, 64]}}, "measure 'speed': batches must be a non-empty list of positive integers"),
    ({"speed": {"rounds": 2.5}}, "measure 'speed': rounds must be a positive integer"),
    ({"speed": {"engines": ["onnxruntime-int9"]}}, "unknown engine(s) ['onnxruntime-int9']; registered:"),
    ({"speed": {"references": ["torch-eager"]}}, "references: unknown reference(s) ['torch-eager']"),
    ({"resident_memory": {"modes": ["frozen", "mmap"]}}, "modes must list one or more of ['resident', 'decode', "
                                                          "'frozen'], got ['frozen', 'mmap']"),
    ({"resident_memory": {"modes": []}}, "modes must list one or more of"),
    ({"bit_kernels": {"shapes": [[64]]}}, "shapes must be a list of [channels, size] pairs"),
    ({"peak_rss": {"rounds": 3}}, "measure 'peak_rss' takes no settings"),
])
def test_bad_measure_settings_are_one_line(entry, words):
    with pytest.raises(UserError) as info:
        load_suite(_suite(entry))
    assert "\n" not in str(info.value) and words in str(info.value)


def test_bad_measure_settings_exit_2_from_the_cli(tmp_path, capsys):
    from deepshrink.cli import main

    suite = tmp_path / "bad.yaml"
    suite.write_text("model: {name: resnet20}\ndata: {name: digits}\nmeasures: [{speed: {threads: [1, zero]}}]\n"
                     "rows: [bwn]\n")
    status = main(["bench", "--suite", str(suite), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "measure 'speed': threads must be" in err[0]
    assert not (tmp_path / "out").exists()


def test_measure_settings_fill_defaults_and_leave_row_keys_alone():
    from deepshrink.bench.measures import measure_settings
    from deepshrink.bench.plan import plan_rows

    plain = load_suite(_suite(None))
    tuned = load_suite(_suite({"speed": {"threads": [1, 2]}}))
    settings = measure_settings("speed", tuned.measures["speed"])
    assert settings["threads"] == [1, 2] and settings["batches"] == [1, 64]
    assert [r.key for r in plan_rows(tuned, "sha256:0")] == [r.key for r in plan_rows(plain, "sha256:0")]


def test_the_runner_hands_a_measure_its_settings_and_the_suites_calibration_images(tmp_path):
    from deepshrink.bench import run_suite
    from deepshrink.bench.results import read_results

    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=10, in_channels=1, shortcut="B").eval()
    torch.save(model.state_dict(), tmp_path / "base.pt")

    def pack_base(task):  # every row: the base packed as it is
        task.out_dir.mkdir(parents=True, exist_ok=True)
        deepshrink.pack(model, task.out_dir / "model.dsz")
        return {"top1": 10.0}

    suite = load_suite({"name": "wired", "model": {"name": "resnet20", "args": {"shortcut": "B"}},
                        "data": {"name": "digits"}, "rows": [{"method": "fp32", "label": "again"}],
                        "measures": [{"speed": {"batches": [2], "rounds": 1, "engines": ["torch-eager"],
                                                "references": [], "calibration": 7, "top1": False}}]})
    summary = run_suite(suite, tmp_path / "out", base=tmp_path / "base.pt", row_runner=pack_base, log=lambda _: None)
    assert summary["failed"] == 0
    record = read_results(tmp_path / "out" / "results.jsonl")[0]
    assert [(r["engine"], r["batch"]) for r in record["speed_rows"]] == [("torch-eager", 2)]
    assert record["speed_setup"]["calibration_images"] == 7 and record["speed_setup"]["rounds"] == 1
    assert "top1" not in record["speed_rows"][0] and record["speed_engine"] == "torch-eager"
