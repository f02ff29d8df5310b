"""Complexity analysis: parameters, MACs, BOPs and bytes at each layer's precision.

    from deepshrink.analysis import profile
    report = profile(model, input_size=(3, 32, 32))
    print(report.format_table()); report.totals["macs"]
"""
from .complexity import ComplexityReport, LayerStats, profile
from .precision import (act_bits, encoded_bits_per_weight, encoded_nbytes, encoded_weights, param_count,
                        storage_bytes, weight_bits)

__all__ = ["ComplexityReport", "LayerStats", "act_bits", "encoded_bits_per_weight", "encoded_nbytes",
           "encoded_weights", "param_count", "profile", "storage_bytes", "weight_bits"]
