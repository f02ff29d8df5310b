"""Side-by-side measurement of run-time engines on one model: latency, resident bytes, top-1.

Latency: every (engine, batch, threads) runner is prepared first and warmed up (warm-up calls are not
timed); then `rounds` rounds each time every runner in turn (interleaved, so a slow drift of the
machine touches all engines alike) over enough calls to last ~20 ms; a round gives one mean per call.
A row reports the median and the interquartile range over rounds. Other models (the float base beside
a compressed one) may be measured in the same rounds: their rows name them (`Row.model`).

Example::

    rows = measure(model, available_engines(model), batches=[1, 64], threads=[1], input_shape=(3, 32, 32))
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .engines import Engine, Runner

ROUND_SECONDS = 0.02
WARMUP_CALLS = 5


@dataclass
class Row:
    engine: str
    batch: int
    threads: int
    median_ms: float = float("nan")
    iqr_ms: float = float("nan")
    resident_bytes: int = 0
    top1: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)
    model: str = ""  # "": the model measured; else the label of another model timed in the same rounds

    def as_dict(self) -> dict:
        row = {"engine": self.engine, "batch": self.batch, "threads": self.threads,
               "median_ms": round(self.median_ms, 4), "iqr_ms": round(self.iqr_ms, 4),
               "resident_bytes": self.resident_bytes}
        if self.top1 is not None:
            row["top1"] = self.top1
        if self.model:
            row["model"] = self.model
        return row


def _timed(runner: Runner, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        runner(x)
    return (time.perf_counter() - start) / calls * 1e3  # ms per call


def top1(runner: Runner, batches: Iterable, chunk: int) -> float:
    """Top-1 (%) of `runner` over (images, labels) batches, fed `chunk` images at a time."""
    correct = total = 0
    for images, labels in batches:
        for start in range(0, len(images), chunk):
            logits = runner(images[start:start + chunk])
            correct += int((logits.argmax(1) == labels[start:start + chunk]).sum())
        total += len(labels)
    return round(100.0 * correct / max(total, 1), 2)


def measure(model: nn.Module, engines: list[Engine], batches: list[int], threads: list[int],
            input_shape: tuple[int, ...], rounds: int = 20, calibration: torch.Tensor | None = None,
            test_batches: Callable[[], Iterable] | None = None,
            progress: Callable[[str], None] = lambda line: None,
            others: Iterable[tuple[str, nn.Module, Engine]] = ()) -> list[Row]:
    """One row per engine, batch and thread count (see the module docstring); with `test_batches`
    (a callable returning (images, labels) batches), each engine's top-1, measured on its runner at
    the largest batch and thread count, is on all its rows. `others`: (label, model, engine) triples
    timed in the same interleaved rounds, e.g. ("base", float_model, get_engine("torch-fp32"))."""
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, *input_shape, generator=generator) for b in batches}
    candidates = [("", model, engine) for engine in engines] + list(others)
    runners: dict[tuple[str, str, int, int], Runner] = {}
    rows: dict[tuple[str, str, int, int], Row] = {}
    calls: dict[tuple[str, str, int, int], int] = {}
    for label, subject, engine in candidates:
        for batch in batches:
            for count in threads:
                key = (label, engine.name, batch, count)
                started = time.perf_counter()
                runner = runners[key] = engine.prepare(subject, inputs[batch], threads=count, calibration=calibration)
                warm = _timed(runner, inputs[batch], WARMUP_CALLS)
                calls[key] = max(1, int(ROUND_SECONDS * 1e3 / max(warm, 1e-3)))
                rows[key] = Row(engine.name, batch, count, resident_bytes=int(runner.resident_bytes()), model=label)
                progress(f"prepared {_name(label, engine.name)} batch {batch} threads {count} in "
                         f"{time.perf_counter() - started:.1f} s (warm-up {warm:.3f} ms/call)")
    for round_index in range(rounds):
        for key, runner in runners.items():
            rows[key].samples_ms.append(_timed(runner, inputs[key[2]], calls[key]))
        progress(f"round {round_index + 1}/{rounds} timed")
    for key, row in rows.items():
        q25, q50, q75 = np.percentile(row.samples_ms, [25, 50, 75])
        row.median_ms, row.iqr_ms = float(q50), float(q75 - q25)
        progress(f"{_name(row.model, row.engine)} batch {row.batch} threads {row.threads}: median "
                 f"{row.median_ms:.3f} ms (IQR {row.iqr_ms:.3f}), resident {row.resident_bytes:,} B")
    if test_batches is not None:
        for label, _, engine in candidates:
            key = (label, engine.name, max(batches), max(threads))
            accuracy = top1(runners[key], test_batches(), key[2])
            progress(f"{_name(label, engine.name)}: top-1 {accuracy:.2f}%")
            for row in rows.values():
                if (row.model, row.engine) == (label, engine.name):
                    row.top1 = accuracy
    return list(rows.values())


def _name(label: str, engine: str) -> str:
    return f"{label}: {engine}" if label else engine


def calibration_images(name: str, root=None, count: int = 512, download: bool = False) -> torch.Tensor:
    """`count` images (N, C, H, W) of data set `name`'s training split at evaluation transforms: a
    stratified subset (the same per-class draw every run), the calibration data of the integer engine."""
    import math

    from ..data import get_dataset, make_loader, subset

    train = get_dataset(name, "train", root=root, download=download)
    per_class = min(math.ceil(count / train.num_classes), max(1, len(train) // train.num_classes))
    return torch.cat([x for x, _ in make_loader(subset(train, per_class=per_class), 256, train=False)])[:count]


def speed_data(name: str, root=None, calibration: int = 512, download: bool = False):
    """(calibration images (N, C, H, W) from `calibration_images`, a callable giving the test split's
    (images, labels) batches, one image's shape) for data set `name`."""
    from ..data import get_dataset, make_loader

    images = calibration_images(name, root, calibration, download)
    test = get_dataset(name, "test", root=root, download=download)
    return images, (lambda: make_loader(test, 500, train=False)), tuple(images.shape[1:])
