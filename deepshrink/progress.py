"""Progress of the long parts of a run, on stderr: a tqdm bar on a terminal, plain lines otherwise.

Every long loop (training steps, calibration, each layer of a layer-wise method, evaluation, packing)
reports through this one module, so the choice between a bar, lines and silence is made in one place.
`quiet()` silences all of it for a block (the CLI's `--quiet`); results, warnings and errors still print.

In plain-line mode (a log file, a pipe) a step that names itself (`update(note=...)`: a layer) gets a
line each; anonymous steps (batches) get at most one line per `LINE_SECONDS`, so a short evaluation
stays silent while a long one shows it is alive.

Example::

    with Progress("evaluate", total=len(loader), unit="batch") as progress:
        for batch in loader:
            ...
            progress.update()
    with deepshrink.quiet():
        deepshrink.compress(model, "ldnq", calib_data=calib)   # no bars, no progress lines
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from time import perf_counter as _clock

LINE_SECONDS = 10.0  # plain-line mode: at most one line this often for steps without a note

_QUIET = contextvars.ContextVar("deepshrink_quiet", default=False)


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Inside the block no progress is reported (bars and lines); `enabled=False` changes nothing."""
    token = _QUIET.set(bool(enabled) or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def style(bar: bool | None = None) -> str:
    """How progress shows now: "off" inside `quiet()`, else "bar" (`bar=True`, or None on a terminal)
    or "lines"."""
    if _QUIET.get():
        return "off"
    return "bar" if (sys.stderr.isatty() if bar is None else bar) else "lines"


def open_bar(total: int | None, task: str, unit: str, initial: int = 0):
    """A tqdm bar on stderr that disappears when closed (the lines printed around it stay)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=task, unit=unit, leave=False, file=sys.stderr)


class Progress:
    """Progress of `total` steps of one task (`total=None` when unknown); a context manager.

    `item(name)` says which step is running (shown on the bar); `update(note=...)` ends a step and, in
    plain-line mode, prints "TASK: UNIT i/total NOTE (S s so far)".
    """

    def __init__(self, task: str, total: int | None = None, unit: str = "it", bar: bool | None = None,
                 enabled: bool = True):
        self.task, self.total, self.unit = task, total, unit
        self.style = style(bar) if enabled else "off"  # enabled=False: another torchrun rank reports
        self.done = 0
        self._start = self._last_line = _clock()
        self._line_done: int | None = None  # `done` when the last line was printed (None: no line yet)
        self._bar = open_bar(total, task, unit) if self.style == "bar" else None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def item(self, name: str) -> None:
        """Show `name` as the step in progress (on the bar; lines wait for the step's end)."""
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=True)

    def update(self, steps: int = 1, note: str | None = None) -> None:
        """`steps` more steps done; `note` describes the one just ended (a line each in line mode)."""
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        elif self.style == "lines":
            now = _clock()
            if note is not None or now - self._last_line >= LINE_SECONDS:
                self._last_line = now
                self._line(note, now)

    def close(self) -> None:
        """Close the bar; in line mode a task that printed anonymous lines ends with a final one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.style == "lines" and self._line_done is not None and self._line_done != self.done:
            self._line(None, _clock())
        self.style = "off"

    def _line(self, note: str | None, now: float) -> None:
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        text = f"{self.task}: {self.unit} {count}" + (f" {note}" if note else "")
        print(f"{text} ({now - self._start:.1f} s so far)", file=sys.stderr, flush=True)
        self._line_done = self.done
