"""Run-time measures: a row's packed model on the run-time engines (`speed`), in resident memory
(`resident_memory`) and on the integer engine against noise-perturbed copies of itself (`engine_agreement`).

    measures:
      - speed: {batches: [1, 64], threads: [1, 2], rounds: 20}
      - resident_memory: {copies: 20, modes: [resident, frozen]}

Each reads the row's model as its packed file gives it back, and the suite's calibration and evaluation
images (`deepshrink/bench/suites/resnet20-speed.yaml` runs all three). Their settings observe the row
without changing it, so they are not in the row key: a finished row is not re-timed when they change.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..runtime.qdq import cpu_flags, pairs_saturate
from .measures import MeasureContext, register_measure

REFERENCES = ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8-ptq"]  # what the float base runs on by default
X86 = "torch-x86-int8-ptq"  # PyTorch's own int8 PTQ of the base: a reference the speed measure may add
RATIOS = {"speedup_vs_torch_fp32": "torch-fp32", "speedup_vs_onnxruntime_fp32": "onnxruntime-fp32",
          "speed_vs_onnxruntime_int8_ptq": "onnxruntime-int8-ptq"}  # issue 21's figures: reference / engine
MODES = ("resident", "decode", "frozen")
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq", "amx_int8")  # what
# the kernels dispatch on: the bit kernels' paths, ONNX Runtime's VNNI or 16-bit pair sums


def calibration_images(ctx: MeasureContext, count: int) -> torch.Tensor | None:
    """The first `count` of the suite's calibration images (N, C, H, W), or None when it has none."""
    batches = ctx.calib_batches()
    if batches is None:
        return None
    images, total = [], 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        images.append(x[:count - total])
        total += len(images[-1])
        if total >= count:
            break
    return torch.cat(images) if images else None


def input_shape(ctx: MeasureContext) -> tuple[int, ...]:
    """One evaluation image's shape (C, H, W)."""
    batch = next(iter(ctx.eval_batches()))
    return tuple((batch[0] if isinstance(batch, (tuple, list)) else batch).shape[1:])


def machine() -> dict:
    """What a timing depends on: the CPU, the libraries, the cores this process may use, the load."""
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor() or "unknown")
    flags = cpu_flags() or ()
    return {"cpu": cpu, "isa": [f for f in ISA_FLAGS if f in flags], "int8_pairs_saturate": pairs_saturate(),
            "torch": torch.__version__, "onnxruntime": ort,
            "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def row_engine(names: list[str]) -> str:
    """The engine a row is deployed on: the integer engine, else the first bit engine, else PyTorch eager."""
    if "onnxruntime-int8" in names:
        return "onnxruntime-int8"
    return next((n for n in names if n.startswith("bits-")), "torch-eager")


def speed_ratios(rows: list[dict], engine: str, threads: int) -> dict:
    """Issue 21's figures at `threads` threads: {figure: {"batchB": reference median / `engine`'s}} (above 1:
    the engine is faster). References are the float base's rows where measured, else the file's own."""
    def at(model, name, batch):
        return next((r["median_ms"] for r in rows if r.get("model", "") == model and r["engine"] == name
                     and r["batch"] == batch and r["threads"] == threads), None)

    out = {figure: {} for figure in RATIOS}
    for batch in sorted({r["batch"] for r in rows}):
        mine = at("", engine, batch)
        for figure, reference in RATIOS.items():
            theirs = at("base", reference, batch) or at("", reference, batch)
            if mine and theirs is not None:
                out[figure][f"batch{batch}"] = round(theirs / mine, 2)
    return {figure: values for figure, values in out.items() if values}


def _shape_cell(record: dict) -> str:
    times = record.get("engine_ms")
    return "—" if not times else ", ".join(f"{k} {v:.3f}" for k, v in times.items())


def _ratio_cell(figure: str):
    def cell(record: dict) -> str:
        ratios = record.get(figure) or {}
        return ", ".join(f"b{batch[5:]} {value:.2f}" for batch, value in ratios.items()) or "—"
    return cell


def _check_speed(settings: dict, where: str) -> None:
    from ..runtime import ENGINES, get_engine

    get_engine("torch-fp32")  # loads the registry
    bad = [n for n in settings["engines"] if n not in ENGINES]
    if bad:
        raise UserError(f"{where}.engines: unknown engine(s) {bad}; registered: {', '.join(sorted(ENGINES))}")
    bad = [n for n in settings["references"] if n not in [*REFERENCES, X86]]
    if bad:
        raise UserError(f"{where}.references: unknown reference(s) {bad}; allowed: {[*REFERENCES, X86]}")


@register_measure("speed", figures={
    "speed_engine": ("run-time engine", "{}"), "engine_top1": ("top-1 on it %", "{:.2f}"),
    "engine_ms": ("its ms (batch×threads)", _shape_cell),
    "speedup_vs_torch_fp32": ("× PyTorch fp32", _ratio_cell("speedup_vs_torch_fp32")),
    "speedup_vs_onnxruntime_fp32": ("× ORT fp32", _ratio_cell("speedup_vs_onnxruntime_fp32")),
    "speed_vs_onnxruntime_int8_ptq": ("× ORT int8 PTQ", _ratio_cell("speed_vs_onnxruntime_int8_ptq")),
    "engine_resident_bytes": ("its resident B", "{:,}")},
    settings={"batches": [1, 64], "threads": [1], "rounds": 20, "calibration": 512, "engines": [],
              "references": list(REFERENCES), "top1": True}, check=_check_speed)
def speed(ctx: MeasureContext) -> dict:
    """The packed model on every engine that runs it (as `deepshrink speed`; `engines:` to choose), the float
    base beside it on PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime's own int8 PTQ (`references:`, which
    may add PyTorch's x86 int8 PTQ), all in the same interleaved rounds.

    Median and IQR over rounds, warm-up excluded, per engine, batch and thread count (`speed_rows`, as
    `deepshrink speed --json`; the base's rows have `model: base`); top-1 of each engine on the evaluation
    images where the labels are the model's. The run-time engine is the integer engine where it runs the
    model, else a bit engine, else PyTorch eager; × columns: a float reference's median over its median
    at the fewest threads (issue 21's figures). Timings read with `speed_setup` (cores, load)."""
    from ..runtime import ENGINES, available_engines, get_engine
    from ..runtime.measure import measure
    from ..runtime.torch_engine import TorchX86Int8PTQ

    settings = ctx.settings
    model = ctx.model.eval()
    wanted = settings["engines"]
    engines = available_engines(model, keep=lambda e: not wanted or e.name in wanted)
    skipped = {e.name: e.unavailable_reason() or e.unsupported_reason(model)
               for e in ENGINES.values() if e not in engines and (not wanted or e.name in wanted)}
    references = [TorchX86Int8PTQ() if name == X86 else get_engine(name) for name in settings["references"]]
    skipped.update({f"base: {e.name}": e.unavailable_reason() for e in references if e.unavailable_reason()})
    others = [("base", ctx.base, e) for e in references if e.unavailable_reason() is None]
    engine = row_engine([e.name for e in engines])
    if engine not in [e.name for e in engines]:
        raise UserError(f"speed: the row's run-time engine {engine} is not among {wanted}; add it to "
                        "the speed measure's engines setting")
    calibration = calibration_images(ctx, settings["calibration"])
    test = ctx.eval_batches if settings["top1"] and ctx.labels else None
    rows = [r.as_dict() for r in measure(model, engines, settings["batches"], settings["threads"], input_shape(ctx),
                                         settings["rounds"], calibration, test, others=others)]
    mine = [r for r in rows if r.get("model", "") == "" and r["engine"] == engine]
    out = {"speed_rows": rows, "speed_engine": engine, "speed_skipped": skipped,
           "engine_ms": {f"{r['batch']}×{r['threads']}": r["median_ms"] for r in mine},
           "engine_resident_bytes": mine[0]["resident_bytes"],
           **speed_ratios(rows, engine, min(settings["threads"])),
           "speed_setup": {**settings, "calibration_images": 0 if calibration is None else len(calibration),
                           "input_shape": list(input_shape(ctx)), **machine()}}
    if mine[0].get("top1") is not None:
        out["engine_top1"] = mine[0]["top1"]
    return out


# ---------------------------------------------------------------- resident memory


def resident_copies(path: str, copies: int, mode: str, shape: list[int]) -> dict:
    """In this process: tensor bytes of `path` loaded in `mode` against its payload, and the RSS each of
    `copies` further loaded copies adds (after gc; after a forward pass each; after glibc's malloc_trim hands
    load-time scratch back). Run it in a fresh process (`resident_memory`), where nothing else is loaded."""
    import ctypes
    import gc

    from .. import api
    from ..nn import tensor_nbytes
    from ..packing.format import read_container

    torch.set_num_threads(1)
    _, blobs, file_bytes = read_container(path)
    payload = sum(b.numel() * b.element_size() for b in blobs.values())
    del blobs
    options = {"decode": mode == "decode", "frozen": mode == "frozen"}
    x = torch.randn(1, *shape)
    warm = api.load(path, **options)
    with torch.no_grad():
        warm(x)
    tensor_bytes = warm.nbytes if mode == "frozen" else tensor_nbytes(warm)
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:  # not glibc: the figure after the trim is the figure before it
        trim = lambda _: None  # noqa: E731
    gc.collect()
    trim(0)
    before = _rss()
    models = [api.load(path, **options) for _ in range(copies)]
    gc.collect()
    after = _rss()
    with torch.no_grad():
        for model in models:
            model(x)
    gc.collect()
    after_run = _rss()
    trim(0)
    after_trim = _rss()
    return {"mode": mode, "file_bytes": file_bytes, "payload_bytes": payload, "tensor_bytes": tensor_bytes,
            "tensor_over_payload": round(tensor_bytes / payload, 3), "copies": copies,
            "rss_per_copy": (after - before) // copies,
            "rss_per_copy_over_file": round((after - before) / copies / file_bytes, 3),
            "rss_per_copy_after_forward": (after_run - before) // copies,
            "rss_per_copy_after_malloc_trim": (after_trim - before) // copies}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def run_resident_copies(path, copies: int, mode: str, shape) -> dict:
    """`resident_copies` in a fresh Python process (one thread), so the RSS counts only the copies."""
    import deepshrink

    code = ("import json; from deepshrink.bench.measures_runtime import resident_copies; "
            f"print(json.dumps(resident_copies({str(path)!r}, {int(copies)}, {mode!r}, {list(shape)!r})))")
    package_root = str(Path(deepshrink.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"resident_memory child ({mode}) failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_resident(settings: dict, where: str) -> None:
    modes = settings["modes"]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"{where}.modes must list one or more of {list(MODES)}, got {modes!r}")


def _rss_cell(record: dict) -> str:
    ratios = record.get("rss_per_copy_over_file") or {}
    return ", ".join(f"{mode} {value:.2f}" for mode, value in ratios.items()) or "—"


@register_measure("resident_memory", figures={
    "tensor_over_payload": ("tensors / payload", "{:.3f}"),
    "rss_per_copy_over_file": ("RSS per copy / file", _rss_cell)},
    settings={"copies": 20, "modes": ["resident", "frozen"]}, check=_check_resident)
def resident_memory(ctx: MeasureContext) -> dict:
    """Tensor bytes of the loaded model against the file's payload, and resident memory added per copy
    over `copies` copies loaded in a fresh process, per mode (`resident`: deepshrink.load; `frozen`:
    load(frozen=True); `decode`: float weights), as a multiple of the file's size.

    `resident_memory` holds each mode's figures: also after a forward pass of every copy and after glibc's
    malloc_trim (what the copies retain once load-time scratch is handed back)."""
    settings = ctx.settings
    path, shape = ctx.row_dir / "model.dsz", input_shape(ctx)
    figures = {mode: run_resident_copies(path, settings["copies"], mode, shape) for mode in settings["modes"]}
    first = figures[settings["modes"][0]] if "resident" not in figures else figures["resident"]
    return {"resident_memory": figures, "tensor_over_payload": first["tensor_over_payload"],
            "rss_per_copy_over_file": {mode: f["rss_per_copy_over_file"] for mode, f in figures.items()}}


# ---------------------------------------------------------------- the integer engine against the file


def compare(got: torch.Tensor, want: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1 (%) of logits `got`, its difference from `want`'s and the share (%) of differing predictions."""
    top1 = 100.0 * float((got.argmax(1) == labels).float().mean())
    file_top1 = 100.0 * float((want.argmax(1) == labels).float().mean())
    return {"top1": round(top1, 2), "delta": round(top1 - file_top1, 2),
            "disagree_pct": round(100.0 * float((got.argmax(1) != want.argmax(1)).float().mean()), 2)}


def _logits(run, chunks: list[torch.Tensor]) -> torch.Tensor:
    """`run` (a model or an engine's runner) over `chunks` of images, as one (N, classes) tensor."""
    with torch.no_grad():
        return torch.cat([run(chunk) for chunk in chunks])


def _spread_cell(record: dict) -> str:
    mean, sd = record.get("perturbed_delta_mean"), record.get("perturbed_delta_sd")
    return "—" if mean is None else f"{mean:+.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


@register_measure("engine_agreement", figures={
    "engine_delta": ("int8 engine Δ top-1", "{:+.2f}"),
    "perturbed_delta_mean": ("perturbed file Δ top-1", _spread_cell),
    "engine_minus_perturbed_mean": ("engine − perturbed", "{:+.2f}")},
    settings={"noise": 0.01, "seeds": 8, "calibration": 512})
def engine_agreement(ctx: MeasureContext) -> dict:
    """How far the integer engine (`onnxruntime-int8`) lands from its file, against how far the file lands
    from itself when every activation quantizer's input gets Gaussian noise of `noise` grid steps
    (`qdq.quantizer_noise`, one copy per seed): the engine's yardstick where it cannot share the file's
    arithmetic bit for bit (a low-bit network's codes flip each other downstream).

    On the evaluation images: the file's top-1; the engine's top-1, its Δ and the share of predictions
    that differ; the same for each perturbed copy, their mean Δ and standard deviation; the engine's Δ
    less that mean. Zero noise gives the file's logits exactly."""
    from ..runtime import get_engine
    from ..runtime.qdq import quantizer_noise

    if not ctx.labels:
        raise UserError("engine_agreement scores top-1: the suite's data labels are not the model's classes")
    settings = ctx.settings
    model = ctx.model.eval()
    images, labels = (torch.cat(parts) for parts in zip(*ctx.eval_batches()))
    chunks = [images[i:i + 500] for i in range(0, len(images), 500)]
    want = _logits(model, chunks)
    out = {"agreement_top1_file": round(100.0 * float((want.argmax(1) == labels).float().mean()), 2),
           "agreement_images": len(labels), "noise_steps": settings["noise"], "seeds": settings["seeds"]}
    engine = get_engine("onnxruntime-int8")
    reason = engine.unavailable_reason() or engine.unsupported_reason(model)
    if reason:
        out["engine_refused"] = reason
    else:
        calibration = calibration_images(ctx, settings["calibration"])
        runner = engine.prepare(model, images[:1], threads=1, calibration=calibration)
        out["engine"] = compare(_logits(runner, chunks), want, labels)
        out["engine_delta"] = out["engine"]["delta"]
    copies = []
    for seed in range(settings["seeds"]):
        with quantizer_noise(model, settings["noise"], seed):
            copies.append(compare(_logits(model, chunks), want, labels))
    deltas = np.array([c["delta"] for c in copies])
    out.update(perturbed=copies, perturbed_delta_mean=round(float(deltas.mean()), 3),
               perturbed_delta_sd=round(float(deltas.std(ddof=1)), 3) if len(deltas) > 1 else None)
    if "engine_delta" in out:
        out["engine_minus_perturbed_mean"] = round(out["engine_delta"] - float(deltas.mean()), 3)
    return out
