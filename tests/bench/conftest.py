"""A toy registered method and a stub row runner, so runner tests never train anything; the README
generator's scripts loaded as modules."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepshrink.methods import Method
from deepshrink.registry import METHODS, MethodEntry


@dataclass
class ToyConfig:
    bits: int = 2

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits}")


class ToyMethod(Method):
    kind = "qat"


@pytest.fixture
def toy_methods(monkeypatch):
    """Registers methods `toya` and `toyb` for the duration of one test."""
    METHODS.names()  # load the real plugins first, so they do not load over our entries later
    for name in ("toya", "toyb"):
        monkeypatch.setitem(METHODS._entries, name, MethodEntry(name, ToyConfig, ToyMethod))
    return ["toya", "toyb"]


def _toy_suite(**extra) -> dict:
    suite = {"name": "toy", "model": {"name": "lenet5", "args": {"num_classes": 10}},
             "data": {"name": "digits"}, "base": {"checkpoint": None},
             "rows": [{"method": "toya", "set": ["bits=1"]}, {"method": "toya", "set": ["bits=4"]},
                      {"method": "toyb", "budget": {"epochs": 2}}]}
    suite.update(extra)
    return suite


class _StubRunner:
    """Records which rows ran; the figures depend on the row's bits so every row differs."""

    def __init__(self, fail=(), interrupt_at=None):
        self.calls: list[str] = []
        self.fail, self.interrupt_at = set(fail), interrupt_at

    def __call__(self, task):
        self.calls.append(task.row.label)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if task.row.label in self.fail:
            raise RuntimeError(f"solver diverged on {task.row.label}")
        bits = (task.row.recipe or {}).get("params", {}).get("bits", 32)
        return {"top1": 80.0 + bits, "top5": 99.0, "bytes": 1000 * bits, "ratio": 32 / bits,
                "macs": 400_000, "compress_seconds": 0.5, "epochs": 1}


@pytest.fixture
def toy_suite(toy_methods):
    """A function building a toy suite dict (model/data unused by the stub runner); kwargs replace keys."""
    return _toy_suite


@pytest.fixture
def stub_runner():
    """The stub row runner class: StubRunner(fail={labels}, interrupt_at=call number)."""
    return _StubRunner


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="session")
def load_script():
    """`load_script(name)`: scripts/NAME.py as a module (scripts/ is not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
