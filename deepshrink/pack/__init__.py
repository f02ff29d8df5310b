"""The packed `.dsz` format: compressed models stored at their real bit width (see `format`).

`deepshrink.pack(model, path)` is the public API function, but importing this subpackage makes Python
bind `deepshrink.pack` to the subpackage itself. So the subpackage is callable too: calling it is
`save(model, path, **options)`, and `deepshrink.pack(...)` works whichever of the two it names.
"""
import sys
import types

from .format import FORMAT, VERSION, load, save
from .report import format_report, inspect

__all__ = ["FORMAT", "VERSION", "format_report", "inspect", "load", "save"]


class _CallablePackage(types.ModuleType):
    def __call__(self, model, path, **options) -> dict:
        """Same as `deepshrink.pack.save`."""
        return save(model, path, **options)


sys.modules[__name__].__class__ = _CallablePackage
