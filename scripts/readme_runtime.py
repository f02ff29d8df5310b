"""The README's run-time tables (scripts/readme_results.py imports them): the integer engine's summary, every
engine per model, the bit kernels per layer shape.

They read the suites `resnet20-speed` and `resnet20-bits` (`benchmarks/results/SUITE/results.jsonl`, the
`speed` and `bit_kernels` measures' records) where those have results, else the JSON files the retired
scripts wrote, named with the script and the last commit that had it.
"""
from __future__ import annotations

import json
from pathlib import Path

from deepshrink.bench.results import RUNS_FILE, current_results, latest_by_key, read_results

SPEED_SUITE, BITS_SUITE = "resnet20-speed", "resnet20-bits"
# result file -> (the script that wrote it, the last commit that had the script, the suite that replaces it)
RETIRED = {"speed_resnet20.json": ("benchmarks/speed_resnet20.py", "41d8e64", SPEED_SUITE),
           "bits_kernels.json": ("benchmarks/bits_kernels.py", "1914cca", BITS_SUITE)}
RATIOS = ("speedup_vs_torch_fp32", "speedup_vs_onnxruntime_fp32", "speed_vs_onnxruntime_int8_ptq")


def runtime_tables(results_root: Path) -> list[str]:
    """The run-time tables: from the suites' results where they exist, else from the retired scripts' files."""
    speed = suite_speed(results_root / SPEED_SUITE)
    out = []
    if speed is None:
        speed = _json(results_root / "speed_resnet20.json")
        out += retired_note("speed_resnet20.json", "two tables read") if speed else []
    compressed = speed and {**speed, "models": {k: v for k, v in speed["models"].items() if not v.get("reference")}}
    out += integer_summary(compressed, None if "suite" in (speed or {}) else
                           _json(results_root / "speed_resnet20_latency_t1.json"))
    out += speed_table(speed, "every engine")
    xnor = suite_speed(results_root / BITS_SUITE) or _json(results_root / "speed_xnor_resnet20.json")
    out += speed_table(xnor, "an XNOR-Net on the bit kernels")
    bits = suite_bits(results_root / BITS_SUITE)
    if bits is None:
        bits = _json(results_root / "bits_kernels.json")
        out += retired_note("bits_kernels.json", "table reads") if bits else []
    return out + bits_table(bits)


def retired_note(name: str, what: str) -> list[str]:
    """One line before tables that read a retired script's file: the script, its last commit, its suite."""
    script, commit, suite = RETIRED[name]
    return [f"The next {what} `benchmarks/results/{name}`, written by `{script}` (removed; last in commit {commit}); "
            f"`deepshrink bench --suite {suite}` makes these figures now, and they replace these once it has run.", ""]


def _ok_records(folder: Path, field: str) -> list[dict]:
    return [r for r in latest_by_key(current_results(folder)).values() if r.get("status") == "ok" and r.get(field)]


def _commands(folder: Path) -> str:
    return ", then ".join(dict.fromkeys(r["command"] for r in read_results(folder / RUNS_FILE) if r.get("command")))


def suite_speed(folder: Path) -> dict | None:
    """The `speed` records of a suite folder in the form the tables read (the retired script's): per row its
    file's rows and issue 21's figures, and the float base's rows as one more entry (`reference: true`)."""
    records = _ok_records(folder, "speed_rows")
    if not records:
        return None
    setup = records[-1].get("speed_setup", {})
    models = {}
    base = next((r for r in records if any(x.get("model") == "base" for x in r["speed_rows"])), None)
    if base is not None:
        models["float base (the suite's checkpoint)"] = {"reference": True, "file_bytes": None, "rows": [
            x for x in base["speed_rows"] if x.get("model") == "base"]}
    for record in records:
        batches = sorted({f"batch{x['batch']}" for x in record["speed_rows"]})
        targets = {b: {f: record[f][b] for f in RATIOS if b in (record.get(f) or {})} for b in batches}
        if record.get("top1") is not None and record.get("engine_top1") is not None:
            targets.update(top1_file=round(record["top1"], 2), top1_integer_engine=record["engine_top1"],
                           top1_delta=round(record["engine_top1"] - record["top1"], 2))
        models[record.get("label", record.get("key"))] = {
            "file_bytes": record.get("bytes"), "targets": targets, "reference": record.get("method") == "fp32",
            "rows": [x for x in record["speed_rows"] if not x.get("model")]}
    return {"suite": folder.name, "command": _commands(folder), "cpu": setup.get("cpu"), "torch": setup.get("torch"),
            "onnxruntime": setup.get("onnxruntime"), "rounds": setup.get("rounds"),
            "calibration_images": setup.get("calibration_images"), "models": models}


def suite_bits(folder: Path) -> dict | None:
    """The latest `bit_kernels` record of a suite folder in the form `bits_table` reads."""
    records = [r for r in _ok_records(folder, "bit_kernels") if r["bit_kernels"].get("layers")]
    if not records:
        return None
    section = records[-1]["bit_kernels"]
    return {"command": _commands(folder), **{k: section.get(k) for k in ("batch", "threads", "rounds")},
            "layers": section["layers"]}


INTEGER_TARGETS = {"speedup_vs_torch_fp32": {"batch1": 5.0, "batch64": 3.5}, "speedup_vs_onnxruntime_fp32": 2.0,
                   "speed_vs_onnxruntime_int8_ptq": 0.9}


def _against(value, target) -> str:
    return "" if value is None else f"{value:.2f}" + ("" if value >= target else " **missed**")


def integer_summary(speed: dict | None, latency: dict | None) -> list[str]:
    """One row per compressed model: file, top-1 from the file and on the integer engine, the engine's
    1-thread latency and its ratios to the float references and to ONNX Runtime's own int8 PTQ, each
    against issue 21's target (latency from the quiet 40-round rerun when there is one)."""
    if not speed or not speed.get("models"):
        return []
    timed = (latency or speed)["models"]
    out = ["### Run time: the integer engine (`onnxruntime-int8`) on the shared ResNet-20, compressed", "",
           f"Top-1 from `{speed.get('command', '')}`; latency from `{(latency or speed).get('command', '')}` "
           f"({speed.get('cpu', '?')}, torch {speed.get('torch', '?')}, onnxruntime {speed.get('onnxruntime', '?')}; "
           "1 thread, median of interleaved rounds, warm-up excluded). Targets (issue 21): >= 5x / 3.5x PyTorch fp32 "
           "at batch 1 / 64, >= 2x ONNX Runtime fp32, >= 0.9x ONNX Runtime's own int8 PTQ; top-1 within 0.1 point "
           "of the file for W4A4 and below, 0.3 for weight-only models with 8-bit activations. Weight-only models "
           f"(L-DNQ, TTQ, BWN) run with 8-bit activations calibrated on {speed.get('calibration_images', 512)} "
           "training images.", "",
           "| model | file | top-1 file | top-1 int8 engine | batch 1 ms | vs PyTorch fp32 | vs ORT fp32 | vs ORT int8 PTQ "
           "| batch 64 ms | vs PyTorch fp32 | vs ORT fp32 | vs ORT int8 PTQ |", "|---|---:|" + "---:|" * 10]
    for name, model in speed["models"].items():
        accuracy = model.get("targets", {})
        figures = timed.get(name, model).get("targets", {})
        rows = {(r["engine"], r["batch"]): r for r in timed.get(name, model)["rows"] if r["threads"] == 1}
        cells = []
        for batch in ("batch1", "batch64"):
            ratios = figures.get(batch, {})
            mine = rows.get(("onnxruntime-int8", int(batch[5:])), {}).get("median_ms")
            cells += [_num(mine, ".3f"),
                      _against(ratios.get("speedup_vs_torch_fp32"), INTEGER_TARGETS["speedup_vs_torch_fp32"][batch]),
                      _against(ratios.get("speedup_vs_onnxruntime_fp32"), INTEGER_TARGETS["speedup_vs_onnxruntime_fp32"]),
                      _against(ratios.get("speed_vs_onnxruntime_int8_ptq"), INTEGER_TARGETS["speed_vs_onnxruntime_int8_ptq"])]
        out.append(f"| {name} | {_size(model.get('file_bytes'))} | {_num(accuracy.get('top1_file'))} | "
                   f"{_num(accuracy.get('top1_integer_engine'))} ({accuracy.get('top1_delta', 0):+.2f}) | " + " | ".join(cells) + " |")
    out.append("")
    return out


def speed_table(speed: dict | None, what: str = "") -> list[str]:
    """Per model and engine: median latency at each batch and thread count, resident bytes, top-1."""
    if not speed or not speed.get("models"):
        return []
    shapes = sorted({(r["batch"], r["threads"]) for m in speed["models"].values() for r in m["rows"]},
                    key=lambda bt: (bt[1], bt[0]))
    head = " | ".join(f"batch {b}, {t} thr. ms" for b, t in shapes)
    out = [f"### Run time: the shared ResNet-20, compressed, on each engine ({what})", "",
           f"`{speed.get('command', '')}` ({speed.get('cpu', '?')}, torch {speed.get('torch', '?')}, onnxruntime "
           f"{speed.get('onnxruntime', '?')}; median of {speed.get('rounds', '?')} interleaved rounds, warm-up "
           "excluded; resident: bytes the engine keeps for the model; top-1 on the 10,000 test images).", "",
           f"| model | file | engine | {head} | resident | top-1 |", "|---|---:|---|" + "---:|" * (len(shapes) + 2)]
    for name, model in speed["models"].items():
        engines = list(dict.fromkeys(r["engine"] for r in model["rows"]))
        for engine in engines:
            rows = {(r["batch"], r["threads"]): r for r in model["rows"] if r["engine"] == engine}
            cells = " | ".join(_num(rows.get(bt, {}).get("median_ms"), ".3f") for bt in shapes)
            any_row = next(iter(rows.values()))
            out.append(f"| {name} | {_size(model.get('file_bytes'))} | {engine} | {cells} | "
                       f"{any_row.get('resident_bytes', 0):,} | {_num(any_row.get('top1'))} |")
    out.append("")
    return out


def bits_table(bits: dict | None) -> list[str]:
    """Per layer shape: PyTorch fp32, ONNX Runtime int8 and the binary kernels on each code path."""
    if not bits or not bits.get("layers"):
        return []
    out = ["### Run time: binary and ternary layers on packed bits", "",
           f"`{bits.get('command', '')}` (batch {bits.get('batch', '?')}, {bits.get('threads', '?')} thread, median "
           f"of {bits.get('rounds', '?')} interleaved rounds, microseconds; speed-up against PyTorch fp32 / ONNX "
           "Runtime int8 QLinearConv of the same shape).", "",
           "| layer | kernel | µs | vs torch fp32 | vs ORT int8 |", "|---|---|---:|---:|---:|"]
    for layer, figures in bits["layers"].items():
        medians, speedups = figures.get("median_us", {}), figures.get("speedup", {})
        for kernel, micros in medians.items():
            ratio = speedups.get(kernel, {})
            out.append(f"| {layer} | {kernel} | {_num(micros, '.1f')} | {_num(ratio.get('vs torch-fp32'))} | "
                       f"{_num(ratio.get('vs ort-int8'))} |")
    out.append("")
    return out


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def _size(n) -> str:
    return "—" if n is None else f"{n:,} B"
