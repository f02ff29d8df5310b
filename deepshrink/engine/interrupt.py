"""Ctrl-C that lets the training step in progress finish, so the run can be saved at a step boundary.

A step changes the weights, the optimizer, BatchNorm's running statistics, the RNG and the hooks' state
in several places; stopped half way, no checkpoint of it could resume exactly. While an
`InterruptGuard` is active, the first SIGINT that arrives inside `critical()` is held until the block
ends and then raised there as KeyboardInterrupt, at a boundary; a SIGINT outside a critical block (the
loader fetching the next batch, evaluation) is raised at once, as Python would. A second SIGINT while
one is held is raised at once too: the user insists, and `torn` says the state was left half changed.

Example::

    with InterruptGuard() as guard:
        for batch in loader:
            with guard.critical():     # Ctrl-C in here stops after the block, never inside it
                train_step(batch)
"""
from __future__ import annotations

import signal
import sys
import threading


class InterruptGuard:
    """Holds SIGINT inside `critical()` blocks (main thread only; elsewhere, or when another handler
    than Python's default is installed, it changes nothing and `critical()` only tracks `torn`)."""

    def __init__(self, enabled: bool = True, notice: str = "interrupt: stopping after this step (Ctrl-C again "
                                                           "to stop at once, unsaved)"):
        self.enabled, self.notice = enabled, notice
        self.requested = False  # a SIGINT is held until the current critical block ends
        self.torn = False  # a KeyboardInterrupt left a critical block half done
        self._inside = False
        self._previous = None

    def __enter__(self) -> "InterruptGuard":
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if self._inside and not self.requested:
            self.requested = True
            print(self.notice, file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def critical(self) -> "_Critical":
        """A block no SIGINT interrupts; a held one is raised as KeyboardInterrupt when it ends."""
        return _Critical(self)


class _Critical:
    def __init__(self, guard: InterruptGuard):
        self.guard = guard

    def __enter__(self) -> None:
        self.guard._inside = True

    def __exit__(self, kind, value, traceback) -> bool:
        self.guard._inside = False
        if kind is not None:
            self.guard.torn = self.guard.torn or issubclass(kind, KeyboardInterrupt)
            return False
        if self.guard.requested:
            raise KeyboardInterrupt
        return False
