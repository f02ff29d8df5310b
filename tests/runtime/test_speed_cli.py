"""`deepshrink speed`: the --json schema on a small model with real data, and one-line errors (exit 2)."""
import json

import pytest

from deepshrink.cli import main

ROW_KEYS = {"engine", "batch", "threads", "median_ms", "iqr_ms", "resident_bytes", "top1"}


def test_json_rows_per_engine_batch_and_thread_count(weight_only_digits, capsys):
    _, path = weight_only_digits
    status = main(["speed", str(path), "--batch", "1", "3", "--rounds", "2", "--engine", "onnxruntime-int8",
                   "--data", "digits", "--calibration", "50", "--json"])
    out, err = capsys.readouterr()
    assert status == 0
    result = json.loads(out.strip().splitlines()[-1])
    rows = result["rows"]
    assert [(r["engine"], r["batch"], r["threads"]) for r in rows] == [
        (engine, batch, 1) for engine in ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8") for batch in (1, 3)]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert all(r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["resident_bytes"] > 0 for r in rows)
    top1 = {r["engine"]: r["top1"] for r in rows}
    assert all(50 < value <= 100 for value in top1.values())  # measured on the digits test split
    assert result["calibration_images"] == 50 and result["input_shape"] == [1, 8, 8]
    # int8 codes: the integer engine's graph is a fraction of the float one
    resident = {r["engine"]: r["resident_bytes"] for r in rows}
    assert resident["onnxruntime-int8"] < 0.4 * resident["onnxruntime-fp32"]
    assert "prepared onnxruntime-int8" in err and "round 2/2" in err


@pytest.mark.parametrize("args, words", [
    (["missing.dsz"], "does not exist"),
    (["{path}", "--batch", "0"], "--batch"),
    (["{path}", "--rounds", "0"], "--rounds"),
    (["{path}", "--engine", "no-such-engine"], "unknown engine"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, weight_only_digits, capsys):
    _, path = weight_only_digits
    status = main(["speed", *[a.format(path=path) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and words in err[0] and err[0].startswith("deepshrink speed: error:")


def test_an_engine_that_cannot_run_the_model_is_refused_with_its_reason(ttq_without_int8_ratio, capsys):
    status = main(["speed", str(ttq_without_int8_ratio), "--engine", "onnxruntime-int8",
                   "--input-shape", "1", "8", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "fc2" in err[0] and "no ratio of integers" in err[0]
