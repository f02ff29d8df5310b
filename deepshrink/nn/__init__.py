"""Inference-form building blocks shared by every method and by the packed format."""
from .compressed import CompressedConv2d, CompressedLinear, compress_layer, get_module, set_module
from .encoded import EncodedWeight, pq_blocks, pq_unblocks
from .packable import Packable

__all__ = ["CompressedConv2d", "CompressedLinear", "EncodedWeight", "Packable", "compress_layer",
           "get_module", "set_module", "pq_blocks", "pq_unblocks"]
