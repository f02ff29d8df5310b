"""deepshrink: compress trained neural networks, and prove it.

Entry points (see deepshrink.api)::

    import deepshrink
    model = deepshrink.create_model("resnet20", shortcut="B")
    result = deepshrink.compress(model, "bwn", train_data=train_loader, val_data=test_loader)
    deepshrink.pack(result.model, "model.dsz")
    model = deepshrink.load("model.dsz")
"""
__version__ = "0.1.0"

from .errors import DeepshrinkError, PackFormatError, UserError  # noqa: E402
from .progress import quiet  # noqa: E402
from .registry import create_model, list_methods, list_models  # noqa: E402


def __getattr__(name):
    # API functions import torch-heavy submodules; load them on first use.
    if name in ("compress", "pack", "load", "evaluate", "CompressResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'deepshrink' has no attribute {name!r}")


__all__ = ["DeepshrinkError", "PackFormatError", "UserError", "compress", "create_model", "evaluate",
           "list_methods", "list_models", "load", "pack", "quiet", "__version__"]
