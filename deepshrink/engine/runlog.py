"""The run folder and progress output of a training run.

    RUN/config.yaml      resolved configuration
    RUN/metrics.jsonl    one JSON object per epoch
    RUN/curves.png       loss and accuracy curves, redrawn every epoch
    RUN/last.pt, best.pt checkpoints (see engine.checkpoint)
    RUN/tb/              TensorBoard events, when asked for and `tensorboard` is installed

Progress is a tqdm bar (images/s, ETA) when stderr is a terminal, plain log lines otherwise, nothing
inside `deepshrink.progress.quiet()` (the epoch lines still print); deepshrink.progress decides which.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import yaml

from ..progress import open_bar, style


class RunLog:
    """Writes the run folder (nothing when `run_dir` is None) and reports progress on stderr."""

    def __init__(self, run_dir=None, enabled: bool = True, progress: bool | None = None,
                 tensorboard: bool = False, log_every: int = 50):
        self.run_dir = Path(run_dir) if run_dir is not None and enabled else None
        self.enabled = enabled
        self.progress = progress  # True: a bar, False: lines, None: a bar on a terminal
        self._style = "off"
        self.log_every = max(1, int(log_every or 50))
        self.history: list[dict] = []
        self._bar = None
        self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = _tensorboard_writer(self.run_dir / "tb")

    # ------------------------------------------------------------ files
    def write_config(self, config: dict) -> None:
        if self.run_dir is not None:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def load_history(self) -> None:
        """Read metrics.jsonl of an interrupted run, so a resumed run keeps its curves."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir is not None else None
        if path is not None and path.exists():
            self.history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def epoch_seconds(self) -> float:
        """Training seconds over every epoch in the history (after `load_history`: a resumed run's too)."""
        return sum(row.get("epoch_seconds", 0.0) for row in self.history)

    def log_epoch(self, metrics: dict) -> None:
        """Record an epoch: a log line, metrics.jsonl, curves.png and TensorBoard scalars."""
        if not self.enabled:
            return
        self.history = [h for h in self.history if h.get("epoch") != metrics.get("epoch")] + [metrics]
        self.message(" ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "w") as handle:  # rewritten: a resume drops stale lines
            for row in self.history:
                handle.write(json.dumps(row) + "\n")
        plot_curves(self.history, self.run_dir / "curves.png")
        if self._tb is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, metrics["epoch"])
            self._tb.flush()

    # ------------------------------------------------------------ progress
    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """Begin an epoch of `steps` iterations, `done` of them already run (a resumed epoch; opens the
        bar on a terminal)."""
        self._epoch, self._steps, self._start, self._images = epoch, steps, time.perf_counter(), 0
        self._done = done
        self._style = style(self.progress) if self.enabled else "off"
        if self._style == "bar":
            self._bar = open_bar(steps, f"epoch {epoch}", "it", initial=done)

    def step(self, index: int, images: int, loss: float, lr: float) -> None:
        """Record iteration `index` (0-based) of `images` images: bar update or a line every log_every."""
        self._images += images
        if not self.enabled:
            return
        rate = self._images / max(1e-9, time.perf_counter() - self._start)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
        elif self._style == "lines" and ((index + 1) % self.log_every == 0 or index + 1 == self._steps):
            eta = (self._steps - index - 1) * (time.perf_counter() - self._start) / (index + 1 - self._done)
            self.message(f"epoch {self._epoch} step {index + 1}/{self._steps} loss {loss:.4f} lr {lr:.4g} "
                         f"{rate:.0f} img/s eta {eta:.0f}s")

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.end_epoch()
        if self._tb is not None:
            self._tb.close()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed (pip install tensorboard); no event files written",
              file=sys.stderr)
        return None
    return SummaryWriter(str(folder))


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss (left) and top-1 accuracy (right) against epoch, written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        _plot(ax_loss, epochs, history, key, label)
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")):
        _plot(ax_acc, epochs, history, key, label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    tmp.replace(path)


def _plot(ax, epochs, history, key, label):
    points = [(e, h[key]) for e, h in zip(epochs, history)
              if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
    if points:
        ax.plot(*zip(*points), marker="o", label=label)
