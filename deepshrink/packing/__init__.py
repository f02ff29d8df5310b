"""The packed `.dsz` format: compressed models stored at their real bit width (see `format`).

The public entry points are `deepshrink.pack(model, path)` and `deepshrink.load(path)` (deepshrink.api);
this subpackage is named `packing` so that importing it never shadows the `deepshrink.pack` function.
"""
from .format import FORMAT, VERSION, load, save
from .report import format_report, inspect

__all__ = ["FORMAT", "VERSION", "format_report", "inspect", "load", "save"]
