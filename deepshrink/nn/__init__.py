"""Inference-form building blocks shared by every method and by the packed format."""
from .attention import SplitAttention, split_attention
from .compressed import (CompressedConv2d, CompressedLinear, compress_layer, decode_weights, get_module,
                         release_weights, set_module, tensor_nbytes)
from ..encodings import EncodedWeight, pq_blocks, pq_unblocks
from .packable import Packable
from .resident import ResidentWeight

__all__ = ["CompressedConv2d", "CompressedLinear", "EncodedWeight", "Packable", "ResidentWeight", "SplitAttention",
           "compress_layer", "decode_weights", "get_module", "release_weights", "set_module", "split_attention",
           "tensor_nbytes", "pq_blocks", "pq_unblocks"]
