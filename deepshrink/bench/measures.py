"""Named row measures: figures beyond accuracy that a suite (or one row) asks for by name.

    measures: [fidelity, peak_rss, layer_seconds]      # a suite's, or a row's (added to the suite's)

A measure is a small function registered under a name; one that takes settings declares them as a mapping
of defaults whose types are the settings' (checked when the suite loads by `_check_setting`, plus the
measure's own `check`), and is given them as a one-key mapping, e.g.
`measures: [peak_rss, {train_step_seconds: {batch_size: 64}}, {speed: {batches: [1, 64]}}]`; the measure reads
them as `ctx.settings` (a dict with every default filled in). After a row has run, the
bench reloads the row's packed file and calls each measure with a `MeasureContext` (that model, the suite's
float base model, the suite's evaluation batches, the row's folder); the figures it returns go into the
row's record in `results.jsonl` and become columns of `report.md`. A measure may also have a `start` hook
that runs just before the row (`peak_rss` resets the memory high-water mark there).

Measures observe a row; none changes what the row computes, so they are not part of the row key: adding
a measure to a suite does not re-run finished rows, whose records then lack its figures (shown as "—").
To measure them too, run the suite into a fresh `--out`. What a measure reads is in the key, though: the
suite's data settings (`bench.data`, e.g. how many evaluation images) and the base checkpoint's content.
A measure whose result would change what a row computes (say, one that fine-tunes) does not belong here:
make it a recipe setting, which the key already covers.

Registered here:
- `fidelity`: top-1 agreement (%) with the float base model and logit SQNR (dB) on the evaluation images,
  for suites whose data labels are not the model's classes (`data: {labels: false}`) and any other.
- `peak_rss`: peak resident memory of the bench process during the row (compress, pack, reload, measures):
  rows run in the bench's own process, whose high-water mark (VmHWM) is reset when each row starts.
- `layer_seconds`: the layer-wise driver's per-layer times (capture + statistics + solve), summed.
- `bits_per_weight`: the layer-wise driver's bits per weight over the compressed layers.
- `load_average`: the machine's 1-minute load average at the row's start and end (a shared machine's
  times and memory figures read with it).
- `threads`, `per_layer_seconds`, `folder_io`: the ImageNet-size suites' (`bench/measures_scale.py`).
- `train_step_seconds`, `pack_variants`: in `measures_train` (a training step's time; the file re-packed).

The method studies' measures (`macs_executed`, `batch1_latency`, `train_bn_top1`, `val_curve`) are in
`deepshrink.bench.measures_studies`, registered when this module is imported.

Registered in their own modules, imported at the end of this one: `speed`, `resident_memory` and
`engine_agreement` (measures_runtime.py), `bit_kernels` (measures_bits.py).

Example::

    @register_measure("max_logit", figures={"max_logit": ("max logit", "{:.2f}")})
    def max_logit(ctx):
        return {"max_logit": float(logits_of(ctx.model, ctx.eval_batches()).max())}
"""
from __future__ import annotations

import json
import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError

LAYER_REPORT = "layers.json"  # written by pipeline.run_compress for layer-wise methods: the driver's summary


@dataclass(frozen=True)
class Measure:
    """A registered measure: `measure(ctx) -> {figure: value}`, its figures' report headings, an optional
    `start()` run just before the row whose result reaches `measure` as `ctx.started[name]`."""

    name: str
    measure: Callable[["MeasureContext"], dict]
    figures: dict  # record field -> (report column heading, format pattern or function of the record)
    start: Callable[[], object] | None = None
    doc: str = ""
    settings: dict | None = None  # {setting: default}; None: it takes none
    check: Callable[[dict, str], None] | None = None  # further rules on its settings: a one-line UserError


MEASURES: dict[str, Measure] = {}


def register_measure(name: str, figures: dict, start: Callable[[], object] | None = None,
                     settings: dict | None = None, check: Callable[[dict, str], None] | None = None):
    """Register the decorated function as measure `name`; `figures` maps the record fields it writes to
    (column heading, "{:.1f}"-style pattern or a function of the record giving the cell); `settings` maps
    each setting to its default (its type is the setting's: `_check_setting`), if it takes any;
    `check(settings, where)` adds rules of its own."""

    def wrap(func):
        summary = " ".join((func.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        MEASURES[name] = Measure(name, func, dict(figures), start, summary, settings, check)
        return func

    return wrap


def check_measures(names, where: str) -> dict[str, dict]:
    """`measures:` as {registered name: settings given}, each entry a name or a one-key mapping
    {name: {setting: value}}; a one-line UserError naming the bad entry or setting."""
    if names is None:
        return {}
    entries = [next(iter(n.items())) if isinstance(n, dict) and len(n) == 1 else (n, {}) for n in names] \
        if isinstance(names, list) else None
    if entries is None or not all(isinstance(n, str) and isinstance(s, dict) for n, s in entries):
        raise UserError(f"{where}: `measures:` must be a list of names, e.g. [fidelity, peak_rss], or of one-key "
                        f"mappings for settings, e.g. {{train_step_seconds: {{batch_size: 64}}}}; "
                        f"registered: {', '.join(sorted(MEASURES))}")
    unknown = [n for n, _ in entries if n not in MEASURES]
    if unknown:
        raise UserError(f"{where}: unknown measure(s) {unknown}; registered: {', '.join(sorted(MEASURES))}")
    for name, given in entries:
        measure_settings(name, given, where)  # a bad setting fails here, when the suite loads
    return dict(entries)


def measure_settings(name: str, given: dict, where: str = "measures"):
    """Measure `name`'s settings: `given` over its defaults, as a dict; None for a measure that takes none.
    A one-line UserError names an unknown key or a bad value."""
    measure = MEASURES[name]
    defaults, given, where = measure.settings, dict(given or {}), f"{where}: measure {name!r}"
    if defaults is None:
        if given:
            raise UserError(f"{where} takes no settings, got {sorted(given)}")
        return None
    if set(given) - set(defaults):
        raise UserError(f"{where}: unknown setting(s) {sorted(set(given) - set(defaults))}; allowed: "
                        f"{sorted(defaults)}")
    for key, value in given.items():
        _check_setting(value, defaults[key], f"{where}: {key}")
    settings = {**defaults, **given}
    if measure.check is not None:
        measure.check(settings, where)
    return settings


def _check_setting(value, default, where: str) -> None:
    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = positive_int(value), "a positive integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        want = "a number >= 0"
    elif isinstance(default, list) and default and all(positive_int(v) for v in default):
        ok = isinstance(value, list) and bool(value) and all(positive_int(v) for v in value)
        want = "a non-empty list of positive integers"
    else:
        ok, want = isinstance(value, type(default)), f"a {type(default).__name__} like {default!r}"
    if not ok:
        raise UserError(f"{where} must be {want}, got {value!r}")


class MeasureContext:
    """What a measure reads: the row's packed file reloaded, the float base model and its logits, the
    evaluation batches, the row's folder and its `start` results; the calibration batches, whether the
    evaluation labels are the model's classes (`labels`) and the suite's measure settings. Each is made on
    first use (a measure that reads none of them costs nothing); the runner shares the base model, its
    logits and the batches between the rows of a run."""

    def __init__(self, model: Callable[[], torch.nn.Module], row_dir, base_model: Callable[[], torch.nn.Module],
                 eval_batches: Callable[[], object], base_logits: Callable[[], torch.Tensor] | None = None,
                 started: dict | None = None, val_batches: Callable[[], object] | None = None,
                 calib_batches: Callable[[], object] | None = None, labels: bool = True):
        self.row_dir = Path(row_dir)
        self._model, self._base_model, self._eval_batches, self._base_logits = model, base_model, eval_batches, \
            base_logits
        self._val_batches = val_batches or eval_batches
        self._calib_batches = calib_batches
        self._loaded = None
        self.started = started or {}
        self.labels = labels  # whether the evaluation labels are the model's classes
        self.settings = None  # the settings of the measure being run, set by run_measures

    @property
    def model(self) -> torch.nn.Module:
        """The row's model as its packed file gives it back (`deepshrink.load`)."""
        if self._loaded is None:
            self._loaded = self._model()
        return self._loaded

    @property
    def base(self) -> torch.nn.Module:
        """The float model every row starts from, in eval mode."""
        return self._base_model()

    def eval_batches(self):
        """The suite's evaluation images: an iterable of (inputs, labels) batches."""
        return self._eval_batches()

    def val_batches(self):
        """The validation images (held out of the training split): what a measure reads when its figure is a
        score that must not look at the test set (the suite's evaluation draw when it draws its own images)."""
        return self._val_batches()

    def calib_batches(self):
        """The suite's calibration images, (inputs, labels) batches; None when the runner gives none."""
        return self._calib_batches() if self._calib_batches else None

    def base_logits(self) -> torch.Tensor:
        """The base model's logits on the evaluation images, (N, classes)."""
        return self._base_logits() if self._base_logits else logits_of(self.base, self.eval_batches())


def start_measures(names) -> dict:
    """Run the `start` hook of each named measure (just before a row); their results, by name."""
    return {n: MEASURES[n].start() for n in names if MEASURES[n].start is not None}


def run_measures(names, ctx: MeasureContext) -> dict:
    """The figures of every named measure on one row (`names`: a list, or {name: settings} as
    `check_measures` gives). Measures with a `start` hook run last, so a high-water mark covers the others'
    work too."""
    given = names if isinstance(names, dict) else dict.fromkeys(names, {})
    figures = {}
    for name in sorted(given, key=lambda n: MEASURES[n].start is not None):
        ctx.settings = measure_settings(name, given[name])
        figures.update(MEASURES[name].measure(ctx))
    return figures


def logits_of(model, batches) -> torch.Tensor:
    """`model`'s outputs on every batch, concatenated: (N, classes)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(batch[0] if isinstance(batch, (tuple, list)) else batch) for batch in batches])


def agreement_and_sqnr(reference: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement %, logit SQNR dB) of `logits` against `reference`, both (N, classes).

    SQNR = 10 log10(sum ref^2 / sum (ref - logits)^2) over every logit of every image; inf when equal.
    """
    if reference.shape != logits.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} against a reference of {tuple(reference.shape)}")
    noise = (reference.double() - logits.double()).pow(2).sum()
    sqnr = math.inf if noise == 0 else 10 * math.log10(reference.double().pow(2).sum().item() / noise.item())
    agreement = (reference.argmax(1) == logits.argmax(1)).double().mean().item() * 100
    return agreement, sqnr


def _sqnr_cell(record: dict) -> str:
    if record.get("identical_logits"):
        return "∞ (identical)"
    value = record.get("logit_sqnr_db")
    return "—" if value is None else f"{value:.2f}"


@register_measure("fidelity", figures={"top1_agreement": ("top-1 agreement %", "{:.1f}"),
                                       "logit_sqnr_db": ("logit SQNR dB", _sqnr_cell)})
def fidelity(ctx: MeasureContext) -> dict:
    """Top-1 agreement with the float base model and logit SQNR, on the suite's evaluation images.

    The score for a model whose classes are not the data set's (an ImageNet network on CIFAR-10 images):
    how closely the compressed network follows the float one. Identical logits have no SQNR (recorded
    as null, with `identical_logits: true`)."""
    logits = logits_of(ctx.model, ctx.eval_batches())
    agreement, sqnr = agreement_and_sqnr(ctx.base_logits(), logits)
    out = {"top1_agreement": round(agreement, 2), "logit_sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else None,
           "fidelity_images": int(logits.shape[0])}
    if not math.isfinite(sqnr):
        out["identical_logits"] = True
    return out


def _layer_report(ctx: MeasureContext) -> dict | None:
    path = ctx.row_dir / LAYER_REPORT
    return json.loads(path.read_text()) if path.is_file() else None


@register_measure("layer_seconds", figures={"layer_seconds": ("layer time", "{:.0f} s")})
def layer_seconds(ctx: MeasureContext) -> dict:
    """Seconds the layer-wise driver spent per layer (capture, statistics, solve), summed; the slowest layer.

    From the driver's report (`layers.json` in the row's folder); nothing for rows that are not layer-wise."""
    report = _layer_report(ctx)
    if not report or not report.get("layers"):
        return {}
    name, slowest = max(report["layers"].items(), key=lambda item: item[1]["seconds"])
    return {"layer_seconds": round(report["seconds"], 1), "compressed_layers": len(report["layers"]),
            "slowest_layer": f"{name} ({slowest['seconds']:.1f} s)"}


@register_measure("bits_per_weight", figures={"bits_per_weight": ("bits/weight", "{:.2f}")})
def bits_per_weight(ctx: MeasureContext) -> dict:
    """Bits per weight over the compressed layers, as the layer-wise driver counts them (`layers.json`)."""
    report = _layer_report(ctx)
    return {"bits_per_weight": round(report["bits_per_weight"], 3)} if report and report.get("layers") else {}


_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def reset_peak_rss() -> str:
    """Reset this process's resident-memory high-water mark (Linux: write 5 to /proc/self/clear_refs).
    Returns how the peak will be read: "row" when reset, "process" (ru_maxrss since start) when not."""
    try:
        _CLEAR_REFS.write_text("5")
        return "row"
    except OSError:
        return "process"


def peak_rss_mib() -> float:
    """Peak resident memory in MiB: VmHWM of /proc/self/status, else ru_maxrss (KiB on Linux)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@register_measure("peak_rss", figures={"peak_rss_mb": ("peak RSS", "{:.0f} MiB")}, start=reset_peak_rss)
def peak_rss(ctx: MeasureContext) -> dict:
    """Peak resident memory of the bench process during the row, in MiB (VmHWM, reset when the row starts):
    memory the process already held counts too, so compare rows with the full-precision row.

    The high-water mark is reset when the row starts (Linux clear_refs) and read after the row and its
    other measures: compress, pack, reload and evaluation. What the process already held includes the
    decoded data set, the suite's images and the base model's logits. `peak_rss_scope` is "row", or
    "process" where the mark cannot be reset (the peak since the process started)."""
    return {"peak_rss_mb": round(peak_rss_mib(), 1), "peak_rss_scope": ctx.started.get("peak_rss", "process")}


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _load_cell(record: dict) -> str:
    start, end = record.get("load_average") or (None, None)
    return "—" if start is None else f"{start:.1f}→{end:.1f}"


@register_measure("load_average", figures={"load_average": ("load (start→end)", _load_cell)},
                  start=_load_average)
def load_average(ctx: MeasureContext) -> dict:
    """The machine's 1-minute load average when the row started and when it ended: above the row's threads, other
    work shared the cores, and times and memory read accordingly."""
    return {"load_average": [ctx.started.get("load_average"), _load_average()]}

from . import measures_studies  # noqa: E402,F401 - registers FBS, LSQ-init and Meta-Quant measures
from . import measures_train  # noqa: E402,F401 - registers train_step_seconds and pack_variants
from . import measures_scale  # noqa: E402,F401  (registers threads, per_layer_seconds, folder_io)
from . import measures_bits, measures_runtime  # noqa: E402,F401 - bit_kernels; speed, resident_memory, engine_agreement
