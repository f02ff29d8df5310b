"""Measures of the ImageNet-size suites (`resnet50-imagenet-like`, `resnet18-imagenet-like`): the threads a row ran
on, its per-layer seconds, and the image folder's own figures. Registered in `deepshrink.bench.measures`.

- `threads`: torch's intra-op threads when the row started and the CPUs the process may run on. The bench sets
  neither: torch takes `OMP_NUM_THREADS`, else one thread per core, and `taskset` limits the CPUs. Run a
  one-thread row as `OMP_NUM_THREADS=1 deepshrink bench ...`.
- `per_layer_seconds`: the layer-wise driver's seconds for every layer (capture, statistics, solve), by name in
  the record; the table shows their median and maximum (`layer_seconds` shows their sum).
- `folder_io`: the image folder the suite's evaluation images come from, opened afresh (see `folder_io`).
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager

import torch

from ..errors import UserError
from .measures import MeasureContext, _layer_report, register_measure

LOADER_WORKERS = 2  # as make_loader's default: the machines this runs on are small and shared
TIMED_IMAGES = 2560  # decoded by each of the two paths (40 batches of 64)


def _threads_now() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"threads": torch.get_num_threads(), "cpus": cpus}


def _threads_cell(record: dict) -> str:
    if record.get("threads") is None:
        return "—"
    cpus = record.get("cpus")
    return f"{record['threads']}" + (f" on {cpus} CPU{'s' if cpus != 1 else ''}" if cpus else "")


@register_measure("threads", figures={"threads": ("threads", _threads_cell)}, start=_threads_now)
def threads(ctx: MeasureContext) -> dict:
    """Torch's intra-op threads when the row started, and the CPUs the process could run on (its affinity):
    the bench sets neither (OMP_NUM_THREADS and taskset do), and a row's time reads with them."""
    return dict(ctx.started.get("threads") or _threads_now())


def _per_layer_cell(record: dict) -> str:
    seconds = sorted((record.get("per_layer_seconds") or {}).values())
    return f"{seconds[len(seconds) // 2]:.1f} / {seconds[-1]:.1f} s" if seconds else "—"


@register_measure("per_layer_seconds", figures={"per_layer_seconds": ("layer s (median / max)", _per_layer_cell)})
def per_layer_seconds(ctx: MeasureContext) -> dict:
    """Seconds of every layer as the layer-wise driver timed it (capture, statistics, solve), by layer name, in
    the row's record; the table shows their median and maximum. Nothing for rows that are not layer-wise."""
    report = _layer_report(ctx)
    if not report or not report.get("layers"):
        return {}
    return {"per_layer_seconds": {name: round(layer["seconds"], 2) for name, layer in report["layers"].items()}}


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def _fresh_cache():
    """deepshrink's cache in an empty temporary folder for the block: the folder's index is built cold."""
    before = os.environ.get("DEEPSHRINK_CACHE")
    with tempfile.TemporaryDirectory(prefix="deepshrink-folder-io-") as folder:
        os.environ["DEEPSHRINK_CACHE"] = folder
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("DEEPSHRINK_CACHE", None)
            else:
                os.environ["DEEPSHRINK_CACHE"] = before


@register_measure("folder_io", figures={
    "index_cold_s": ("index build", "{:.2f} s"), "index_reopen_s": ("reopen", "{:.2f} s"),
    "full_scan_s": ("stat every file", "{:.2f} s"), "rss_added_by_open_mb": ("open adds", "{:.0f} MiB"),
    "decode_alone_img_s": ("decode alone", "{:.0f} img/s"),
    "loader_img_s": (f"loader, {LOADER_WORKERS} workers", "{:.0f} img/s")})
def folder_io(ctx: MeasureContext) -> dict:
    """The image folder of the suite's evaluation images (its train split), opened as `get_dataset` opens it: the
    index built with an empty cache, then reopened from it; every file listed and statted, for comparison;
    resident memory the open added; images per second decoded and augmented (random-resized-crop to 224 and
    flip) in this process alone, one thread, and by the training loader's workers, batches of 64. Images are
    decoded per item and dropped: nothing holds the decoded folder."""
    from ..data import make_loader
    from ..data.loader import _one_thread
    from ..data.folder import read_image_folder, scan_folder, split_folder

    root = getattr(ctx.eval_batches().dataset, "root", None)
    folder = split_folder(root, "train") if root is not None else None
    if folder is None:
        raise UserError("the folder_io measure reads an image folder (<root>/train/<class>/*.jpg); this suite's "
                        f"evaluation images do not come from one ({root}): remove folder_io from its measures")
    out = {}
    with _fresh_cache():
        rss_before, start = _rss_mib(), time.perf_counter()
        read_image_folder(root, "train", decode="lazy")
        out["index_cold_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        dataset = read_image_folder(root, "train", decode="lazy")
        out["index_reopen_s"] = round(time.perf_counter() - start, 3)
        out["rss_added_by_open_mb"] = round(_rss_mib() - rss_before, 1)
    start = time.perf_counter()
    scan_folder(folder)
    out["full_scan_s"] = round(time.perf_counter() - start, 3)
    count = min(TIMED_IMAGES, len(dataset))
    batch = max(1, min(64, count // 2))  # at least two batches: the first (workers starting) is not timed
    chosen = dataset.select(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:count])
    with _one_thread():
        start = time.perf_counter()
        images = sum(len(labels) for _, labels in make_loader(chosen, batch, train=True, num_workers=0))
        out["decode_alone_img_s"] = round(images / (time.perf_counter() - start), 1)
    batches = iter(make_loader(chosen, batch, train=True, num_workers=LOADER_WORKERS))
    next(batches)  # the workers started and warm
    start, images = time.perf_counter(), 0
    for _, labels in batches:
        images += len(labels)
    if images:
        out["loader_img_s"] = round(images / (time.perf_counter() - start), 1)
    return {**out, "loader_workers": LOADER_WORKERS, "timed_images": count, "folder_images": len(dataset),
            "folder_classes": dataset.num_classes}
