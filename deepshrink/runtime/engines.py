"""The engine registry: name -> Engine, the interface every run-time backend implements.

An engine is stateless; `prepare` builds a `Runner` for one model, batch shape and thread count
(and, for engines that calibrate activation ranges, calibration images).
Modules that define engines register themselves on import; the registry imports them lazily
(`_ENGINE_MODULES`) so that a missing optional dependency (onnxruntime, a compiler for the native
bit kernels) only makes that engine unavailable, with its reason.

Example::

    from deepshrink.runtime import available_engines
    for engine in available_engines(model):
        runner = engine.prepare(model, torch.randn(1, 3, 32, 32), threads=1)
        logits = runner(x)
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from ..errors import UserError

# Modules whose import registers engines; a module that is absent is skipped.
_ENGINE_MODULES = ["deepshrink.runtime.torch_engine", "deepshrink.runtime.ort_engine",
                   "deepshrink.runtime.bits_engine"]


class Runner:
    """A model prepared for one engine: call it on an NCHW float batch, get float logits."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def resident_bytes(self) -> int:
        """Bytes of weights/state this runner keeps (tensors, engine buffers, serialised graphs)."""
        raise NotImplementedError  # pragma: no cover - interface


class Engine:
    """One way to run a model. Subclasses set `name` and override the three methods."""

    name: str = ""
    reference: bool = False  # a float reference (torch-fp32, onnxruntime-fp32), not a compressed engine

    def unavailable_reason(self) -> str | None:
        """None when this engine can run on this machine; otherwise one line saying why not."""
        return None

    def unsupported_reason(self, model: nn.Module) -> str | None:
        """None when this engine can run `model`; otherwise one line naming the first obstacle."""
        return None

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1,
                calibration: torch.Tensor | None = None) -> Runner:
        """A runner of `model` for batches shaped like `example` on `threads` threads. `calibration`:
        images (N, C, H, W) from the training data, for engines that set activation ranges from data
        (the integer engine, ONNX Runtime's PTQ); others ignore it. None: they calibrate on `example`."""
        raise NotImplementedError  # pragma: no cover - interface


ENGINES: dict[str, Engine] = {}
_loaded = False


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: register one instance of `cls` under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in ENGINES and type(ENGINES[cls.name]) is not cls:
        raise ValueError(f"engine {cls.name!r} is registered twice")
    ENGINES[cls.name] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _ENGINE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def get_engine(name: str) -> Engine:
    _load()
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def available_engines(model: nn.Module | None = None,
                      keep: Callable[[Engine], bool] = lambda engine: True) -> list[Engine]:
    """Engines that run on this machine (and can run `model`, when given), in registration order."""
    _load()
    return [e for e in ENGINES.values() if keep(e) and e.unavailable_reason() is None
            and (model is None or e.unsupported_reason(model) is None)]
