"""The contract of a module that can live inside a packed `.dsz` model.

`deepshrink.pack` stores, for every registered packable module in a model, its registry name and
`pack_config()` (JSON), its `encoded_tensors()` at their real bit width, and the rest of its state
(BN statistics, biases, learned quantizer parameters) as ordinary tensors. `deepshrink.load` builds the
architecture from the model registry, replaces each recorded module (parents before children) with
`cls.from_pack_config(config)`, restores encoded tensors through `load_encoded`, then loads the rest.
"""
from __future__ import annotations

from torch import nn

from ..encodings import EncodedWeight


class Packable:
    """Mixin for nn.Modules that may appear in a packed model. Register with `@register_packable()`."""

    def pack_config(self) -> dict:
        """JSON-serialisable constructor arguments."""
        raise NotImplementedError

    @classmethod
    def from_pack_config(cls, config: dict) -> nn.Module:
        return cls(**config)

    def encoded_tensors(self) -> dict[str, EncodedWeight]:
        """State-dict keys (relative to this module) stored as codes rather than floats."""
        return {}

    def load_encoded(self, name: str, encoded: EncodedWeight) -> None:
        raise NotImplementedError(f"{type(self).__name__} stores no encoded tensor {name!r}")
