"""Name -> object registries: models (like timm's `create_model`), compression methods, packable modules.

A method is a config dataclass that validates itself plus a handler class registered for it::

    @register_method("bwn", BWNConfig)
    class BWN(QATMethod): ...

Every registry lists what it holds when a name is unknown, so a typo gets a useful message.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")

# Where the modules that register things are declared: each package names itself as a Python entry point
# (pyproject.toml, `[project.entry-points."deepshrink.methods"]` and the like) and is imported on the first
# lookup, so that `import deepshrink` stays cheap and a broken method module cannot break unrelated commands.
# deepshrink's own packages are declared there like any other package's: a package that adds methods, models
# or packable modules declares itself the same way, and nothing here lists them.
ENTRY_POINT_GROUPS = {"model": "deepshrink.models", "method": "deepshrink.methods",
                      "packable module": "deepshrink.packable_modules"}
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_modules(group: str) -> list[str]:
    """The modules declared under entry-point `group` by every installed distribution. Where deepshrink
    itself runs from a source tree whose metadata is missing or older than its pyproject.toml (not
    installed, or installed before a package was added), its own declarations are read from that file."""
    from importlib.metadata import entry_points

    modules = [ep.module for ep in entry_points(group=group)]
    if _PYPROJECT.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: the installed metadata alone
            return list(dict.fromkeys(modules))
        with _PYPROJECT.open("rb") as file:
            project = tomllib.load(file).get("project", {})
        if project.get("name") == "deepshrink":  # not some other project's file that happens to sit there
            modules += [value.split(":")[0] for value in project.get("entry-points", {}).get(group, {}).values()]
    return list(dict.fromkeys(modules))


class Registry(Generic[T]):
    """A case-insensitive name -> entry map with helpful errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loaded = False

    def _load_plugins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in declared_modules(ENTRY_POINT_GROUPS[self.kind]) if self.kind in ENTRY_POINT_GROUPS else []:
            try:
                importlib.import_module(package)
            except ModuleNotFoundError as exc:
                if exc.name != package:  # a real missing dependency inside the package: surface it
                    raise

    def register(self, name: str, entry: T) -> T:
        key = name.lower()
        if key in self._entries and self._entries[key] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[key] = entry
        return entry

    def get(self, name: str) -> T:
        self._load_plugins()
        key = str(name).lower()
        if key not in self._entries:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._entries))}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# ---------------------------------------------------------------- models
MODELS: Registry[Callable[..., Any]] = Registry("model")


def register_model(name: str | None = None):
    """Decorator: register a model constructor under `name` (default: the function's name)."""

    def deco(fn):
        MODELS.register(name or fn.__name__, fn)
        return fn

    return deco


def create_model(name: str, **kwargs):
    """Build a registered model; the result remembers how it was built (for `deepshrink.load`).

    Example::

        model = create_model("resnet20", num_classes=10, shortcut="B")
    """
    check_model_args(name, kwargs, partial=False)
    model = MODELS.get(name)(**kwargs)
    model.deepshrink_arch = {"name": name.lower(), "kwargs": dict(kwargs)}
    return model


def check_model_args(name: str, kwargs: dict, partial: bool = True) -> None:
    """UserError naming the accepted arguments when model `name` does not take `kwargs` (with
    `partial`, arguments left out are fine: the data set supplies num_classes and in_channels later)."""
    signature = inspect.signature(MODELS.get(name))
    try:
        (signature.bind_partial if partial else signature.bind)(**kwargs)
    except TypeError as exc:
        accepted = ", ".join(p for p in signature.parameters if p not in ("args", "kwargs"))
        raise UserError(f"model {name!r}: {exc} (--model-args accepts: {accepted})") from None


def list_models() -> list[str]:
    """Names of every registered model."""
    return MODELS.names()


# ---------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type
    handler_cls: type


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(name: str, config_cls: type):
    """Decorator: register `handler_cls` as compression method `name` configured by `config_cls`."""

    def deco(handler_cls):
        METHODS.register(name, MethodEntry(name.lower(), config_cls, handler_cls))
        handler_cls.method_name = name.lower()
        handler_cls.config_cls = config_cls
        return handler_cls

    return deco


def list_methods() -> list[str]:
    """Names of every registered compression method."""
    return METHODS.names()


# ---------------------------------------------------------------- packable modules
PACKABLE: Registry[type] = Registry("packable module")


def register_packable(name: str | None = None):
    """Decorator for nn.Module classes that may appear in a packed model (see deepshrink.nn.packable)."""

    def deco(cls):
        PACKABLE.register(name or cls.__name__, cls)
        cls.packable_name = (name or cls.__name__).lower()
        return cls

    return deco
