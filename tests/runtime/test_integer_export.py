"""`deepshrink export --integer`: the integer engine's graph as a file that ONNX Runtime alone runs as
integer kernels, with the loaded model's predictions, built for a named kind of CPU."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from deepshrink.cli import main
from deepshrink.runtime.integer_export import export_integer
from deepshrink.runtime.ort_engine import session_options
from deepshrink.runtime.qdq import pairs_saturate

from int8_graph import AGREE_W4A4, pair_sums


def _top1_from_file(path, images, labels) -> float:
    session = onnxruntime.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images.numpy()})[0]  # (N, classes)
    return float(np.mean(logits.argmax(1) == labels.numpy()))


def test_the_file_alone_gives_the_loaded_models_predictions(w4a4_digits, digits_test, digits_calibration, tmp_path):
    model, path = w4a4_digits
    info = export_integer(path, tmp_path / "w4a4.onnx", digits_calibration)
    images, labels = digits_test
    session = onnxruntime.InferenceSession(str(tmp_path / "w4a4.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": images.numpy()})[0].argmax(1)
    with torch.no_grad():
        want = model(images).argmax(1).numpy()
    assert np.mean(got == want) >= AGREE_W4A4
    assert info["verified_images"] == len(digits_calibration) and info["agreement"] >= AGREE_W4A4
    assert info["bytes"] == (tmp_path / "w4a4.onnx").stat().st_size


def test_onnxruntime_runs_the_file_as_integer_kernels(w4a4_digits, digits_calibration, tmp_path):
    _, path = w4a4_digits
    export_integer(path, tmp_path / "w4a4.onnx", digits_calibration, verify=False)
    options = session_options(1, tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(tmp_path / "w4a4.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") >= 21 and "QLinearAdd" in ops


def test_the_file_is_a_fraction_of_the_float_export(w4a4_digits, digits_calibration, tmp_path):
    from deepshrink.runtime.qdq_graph import export_float
    from deepshrink.runtime.torch_engine import float_reference

    model, path = w4a4_digits
    info = export_integer(path, tmp_path / "w4a4.onnx", digits_calibration, verify=False)
    float_bytes = len(export_float(float_reference(model), digits_calibration[:1]))
    assert info["bytes"] < 0.4 * float_bytes  # int8 codes and int32 biases against fp32 weights


@pytest.mark.parametrize("target, saturating", [("no-vnni", True), ("vnni", False)])
def test_the_target_cpu_sets_the_weight_width_and_is_written_in_the_file(target, saturating, w4a4_digits,
                                                                          digits_calibration, tmp_path):
    _, path = w4a4_digits
    info = export_integer(path, tmp_path / "w4a4.onnx", digits_calibration, target=target, verify=False)
    graph = onnx.load(tmp_path / "w4a4.onnx")
    sums = pair_sums(graph)
    if saturating:  # every u8 x s8 pair sum fits the 16 bits AVX2 adds it in
        assert max(sums.values()) <= 32767 and info["weight_limit"] == 64
    else:  # the float stem uses all of int8 on 8-bit image codes
        assert max(sums.values()) == 2 * 255 * 127 and info["weight_limit"] == 127
    metadata = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert metadata["deepshrink.int8_weight_limit"] == info["weight_limit"]
    assert ("without VNNI" in metadata["deepshrink.int8_target"]) == saturating


def test_target_this_reads_this_cpu(w4a4_digits, digits_calibration, tmp_path):
    _, path = w4a4_digits
    info = export_integer(path, tmp_path / "w4a4.onnx", digits_calibration, verify=False)
    assert info["weight_limit"] == (64 if pairs_saturate() else 127)


def test_cli_calibrates_on_the_named_data_and_prints_one_json_line(weight_only_digits, digits_test, tmp_path, capsys):
    model, path = weight_only_digits
    status = main(["export", str(path), "-o", str(tmp_path / "pow2.onnx"), "--integer", "--data", "digits",
                   "--calibration", "64"])
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0 and info["calibration_images"] == 64 and info["agreement"] >= 0.9
    images, labels = digits_test
    with torch.no_grad():
        file_top1 = float((model(images).argmax(1) == labels).float().mean())
    assert abs(_top1_from_file(tmp_path / "pow2.onnx", images, labels) - file_top1) <= 0.02
    codes = [numpy_helper.to_array(t) for t in onnx.load(tmp_path / "pow2.onnx").graph.initializer]
    assert sum(c.dtype == np.int8 and c.ndim == 4 for c in codes) >= 20  # one int8 tensor per compressed conv


@pytest.mark.parametrize("extra, words", [
    ([], "records no data set"),
    (["--data", "digits", "--opset", "21"], "--opset"),
    (["--data", "digits", "--calibration", "0"], "--calibration"),
])
def test_bad_integer_export_is_one_line_exit_2_and_writes_nothing(extra, words, weight_only_digits, tmp_path,
                                                                   capsys):
    _, path = weight_only_digits
    out = tmp_path / "x.onnx"
    status = main(["export", str(path), "-o", str(out), "--integer", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and words in err[0] and err[0].startswith("deepshrink export: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_integer_options_without_integer_are_refused(weight_only_digits, tmp_path, capsys):
    _, path = weight_only_digits
    status = main(["export", str(path), "-o", str(tmp_path / "x.onnx"), "--data", "digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--integer" in err[0] and not (tmp_path / "x.onnx").exists()


def test_a_model_without_an_integer_form_is_refused_with_its_reason(ttq_without_int8_ratio, tmp_path, capsys):
    status = main(["export", str(ttq_without_int8_ratio), "-o", str(tmp_path / "ttq.onnx"), "--integer",
                   "--data", "digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "fc2" in err[0] and "without --integer" in err[0]
    assert not (tmp_path / "ttq.onnx").exists()



def test_eval_scores_an_exported_file_on_the_data_it_records(w4a4_digits, digits_test, digits_calibration, tmp_path,
                                                              capsys):
    import deepshrink

    model, _ = w4a4_digits
    deepshrink.pack(model, tmp_path / "w4a4.dsz", data={"name": "digits", "input_shape": [1, 8, 8]})
    export_integer(tmp_path / "w4a4.dsz", tmp_path / "w4a4.onnx", digits_calibration, verify=False)
    status = main(["eval", str(tmp_path / "w4a4.onnx"), "--json"])  # no --data: the file's metadata names it
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    images, labels = digits_test
    assert status == 0 and metrics["data"] == "digits" and metrics["n"] == len(labels)
    assert metrics["top1"] == pytest.approx(100 * _top1_from_file(tmp_path / "w4a4.onnx", images, labels), abs=1e-6)


def test_eval_runs_the_weight_only_export_too(weight_only_digits, digits_test, tmp_path, capsys):
    model, path = weight_only_digits
    assert main(["export", str(path), "-o", str(tmp_path / "pow2.onnx"), "--input-shape", "1,8,8"]) == 0
    capsys.readouterr()
    status = main(["eval", str(tmp_path / "pow2.onnx"), "--data", "digits", "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    images, labels = digits_test
    with torch.no_grad():
        file_top1 = 100 * float((model(images).argmax(1) == labels).float().mean())
    assert status == 0 and metrics["top1"] == pytest.approx(file_top1, abs=100 / len(labels) + 1e-6)


@pytest.mark.parametrize("content, words", [(b"not onnx at all", "not a readable ONNX file"),
                                            (None, "does not exist")])
def test_eval_of_a_bad_onnx_file_is_one_line_exit_2(content, words, tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    status = main(["eval", str(path), "--data", "digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and words in err[0]
