"""Moved: `EncodedWeight` and its kinds live in deepshrink.encodings. This module keeps the old import path
for deepshrink.runtime, which still imports it from here."""
from ..encodings import EncodedWeight, IntegerForm, pq_blocks, pq_unblocks

__all__ = ["EncodedWeight", "IntegerForm", "pq_blocks", "pq_unblocks"]
