"""deepshrink: compress trained neural networks, and prove it.

Entry points (see deepshrink.api)::

    import deepshrink
    model = deepshrink.create_model("resnet20", shortcut="B")
    result = deepshrink.compress(model, "bwn", train_data=train_loader, val_data=test_loader)
    deepshrink.pack(result.model, "model.dsz")
    model = deepshrink.load("model.dsz")

    # a whole run, as `deepshrink compress` does it: build, compress, pack to runs/bwn/model.dsz, measure
    spec = deepshrink.run_spec("bwn", model="lenet5", data="fashion-mnist", out="runs/bwn")
    metrics = deepshrink.run_compress(spec)
"""
__version__ = "0.1.0"

from .errors import DeepshrinkError, PackFormatError, UserError  # noqa: E402
from .progress import quiet  # noqa: E402
from .registry import create_model, list_methods, list_models  # noqa: E402


def __getattr__(name):
    # API functions import torch-heavy submodules; load them on first use.
    if name in ("compress", "pack", "load", "evaluate", "training_form", "CompressResult"):
        from . import api

        return getattr(api, name)
    if name in ("RunSpec", "run_spec"):
        from . import spec

        return getattr(spec, name)
    if name == "run_compress":
        from .pipeline import run_compress

        return run_compress
    raise AttributeError(f"module 'deepshrink' has no attribute {name!r}")


__all__ = ["DeepshrinkError", "PackFormatError", "RunSpec", "UserError", "compress", "create_model", "evaluate",
           "list_methods", "list_models", "load", "pack", "quiet", "run_compress", "run_spec", "training_form",
           "__version__"]
