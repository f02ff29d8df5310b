"""Speed benchmark: compressed ResNet-20s on every run-time engine, side by side in one process.

For each packed model: file size, top-1 from the file (the `torch-eager` engine: the loaded model in
PyTorch), top-1 and latency of every engine (`deepshrink.runtime.measure`, the function behind
`deepshrink speed`), resident bytes; beside the shared float ResNet-20 itself on torch-fp32,
onnxruntime-fp32 and ONNX Runtime's own int8 PTQ, and PyTorch's x86 int8 engine (FX graph-mode
static PTQ, the same calibration images), the alternative to ONNX Runtime for the integer engine.
The issue-21 targets are evaluated on the 1-thread rows and written with the figures.

    for n in dorefa-w4a4 pact-w4a4 lsq-w3a3 lsq-w2a2 ldnq-l3 ldnq-l5 ttq bwn; do M="$M --model $n=runs/speed/$n/model.dsz"; done
    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/speed_resnet20.py $M --threads 1 \\
        --base ../shared/models/resnet20-cifar10jpeg.pt --data-root ~/.cache/deepshrink/cifar10-jpeg \\
        --out benchmarks/results/speed_resnet20.json

The models, each with `--model resnet20 --model-args shortcut=B --base ../shared/models/resnet20-cifar10jpeg.pt
--data cifar10 --out runs/speed/NAME`: `deepshrink compress --method ldnq --set levels=3` (and 5); the QAT ones
`--recipe R --set train.epochs=1 --set train.max_steps_per_epoch=150` for R in dorefa-w4a4, pact-w4a4, lsq-w3a3,
lsq-w2a2, ttq and bwn-kd (its folder: runs/speed/bwn): a short fine-tune, enough to put the codes and
activation grids in place (their accuracy is not the point here; the QAT tables have the full recipes).
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import deepshrink
from deepshrink.runtime import available_engines, get_engine
from deepshrink.runtime.measure import measure, speed_data, top1

REFERENCES = ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8-ptq"]
COMPRESSED = ["torch-fp32", "torch-eager", "torch-frozen", "onnxruntime-fp32", "onnxruntime-int8-ptq", "onnxruntime-int8"]


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def torch_x86_int8(model, calibration, batches, threads, rounds, test_batches) -> list[dict]:
    """PyTorch's x86 quantized engine (FX graph mode static PTQ, x86 qconfig) on the float model."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from deepshrink.runtime.torch_engine import TorchRunner

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calibration[:1],))
        with torch.no_grad():
            for start in range(0, len(calibration), 64):
                prepared(calibration[start:start + 64])
        quantized = convert_fx(prepared)
    rows = []
    for count in threads:
        runner = TorchRunner(quantized, count)
        for batch in batches:
            x = torch.randn(batch, *calibration.shape[1:], generator=torch.Generator().manual_seed(0))
            for _ in range(3):
                runner(x)
            calls = max(1, int(20 / max(1e-3, _ms(runner, x, 1))))
            samples = [_ms(runner, x, calls) for _ in range(rounds)]
            q25, q50, q75 = np.percentile(samples, [25, 50, 75])
            rows.append({"engine": "torch-x86-int8-ptq", "batch": batch, "threads": count,
                         "median_ms": round(float(q50), 4), "iqr_ms": round(float(q75 - q25), 4)})
    if test_batches is not None:
        accuracy = top1(TorchRunner(quantized, max(threads)), test_batches(), max(batches))
        for row in rows:
            row["top1"] = accuracy
    return rows


def _ms(runner, x, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        runner(x)
    return (time.perf_counter() - start) / calls * 1e3


def targets(rows: list[dict]) -> dict:
    """Issue 21's figures for one compressed model, from its 1-thread rows."""
    at = {(r["engine"], r["batch"]): r for r in rows if r["threads"] == 1}
    result = {}
    for batch in sorted({b for _, b in at}):
        mine = at[("onnxruntime-int8", batch)]["median_ms"]
        result[f"batch{batch}"] = {
            "speedup_vs_torch_fp32": round(at[("torch-fp32", batch)]["median_ms"] / mine, 2),
            "speedup_vs_onnxruntime_fp32": round(at[("onnxruntime-fp32", batch)]["median_ms"] / mine, 2),
            "speed_vs_onnxruntime_int8_ptq": round(at[("onnxruntime-int8-ptq", batch)]["median_ms"] / mine, 2)}
    if "top1" in rows[0]:
        result["top1_file"] = at[("torch-eager", 1)]["top1"]
        result["top1_integer_engine"] = at[("onnxruntime-int8", 1)]["top1"]
        result["top1_delta"] = round(result["top1_integer_engine"] - result["top1_file"], 2)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a packed model")
    parser.add_argument("--base", help="the float ResNet-20 checkpoint (the anchor rows)")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--latency-only", action="store_true", help="skip top-1 (a timing rerun)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    calibration, test_batches, shape = speed_data(args.data, args.data_root, args.calibration)
    if args.latency_only:
        test_batches = None
    result = {"command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
              "cpu": _cpu(), "torch": torch.__version__, "onnxruntime": _ort_version(),
              "batches": args.batch, "threads": args.threads, "rounds": args.rounds,
              "calibration_images": len(calibration), "data": args.data, "models": {}}
    if args.base:
        base = deepshrink.create_model("resnet20", shortcut="B")
        base.load_state_dict(torch.load(args.base, map_location="cpu", weights_only=True))
        base.eval()
        log("float ResNet-20: reference engines")
        rows = measure(base, [get_engine(n) for n in REFERENCES], args.batch, args.threads, shape,
                       args.rounds, calibration, test_batches, log)
        result["float"] = {"checkpoint": args.base, "rows": [r.as_dict() for r in rows]}
        log("float ResNet-20: PyTorch x86 int8")
        result["float"]["rows"] += torch_x86_int8(base, calibration, args.batch, args.threads, args.rounds,
                                                  test_batches)
    for spec in args.model:
        name, _, path = spec.partition("=")
        model = deepshrink.load(path).eval()
        engines = [get_engine(n) for n in COMPRESSED]
        reasons = {e.name: e.unsupported_reason(model) for e in engines}
        refused = {name: reason for name, reason in reasons.items() if reason}
        engines = [e for e in engines if e.name not in refused]
        for engine, reason in refused.items():
            log(f"{name}: {engine} refuses it: {reason}")
        engines += [e for e in available_engines(model) if e.name.startswith("bits-")]
        log(f"{name}: {', '.join(e.name for e in engines)}")
        rows = [r.as_dict() for r in measure(model, engines, args.batch, args.threads, shape, args.rounds,
                                             calibration, test_batches, log)]
        result["models"][name] = {"path": path, "file_bytes": Path(path).stat().st_size, "rows": rows,
                                  "refused": refused, "targets": targets(rows) if not refused else {}}
        log(f"{name}: {json.dumps(result['models'][name]['targets'])}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
