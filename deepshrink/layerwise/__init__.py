"""Layer-wise post-training compression with a small calibration set: L-OBS, L-DNQ, product quantization.

Importing this package registers the methods: lobs, magnitude (L-OBS's baseline), ldnq, ldnq_rtn
(its baseline), pq and kmeans (its baseline). They share one driver, `base.LayerwiseMethod`.
"""
from . import ldnq, lobs, pq  # noqa: F401  (registers ldnq, ldnq_rtn, lobs, magnitude, pq, kmeans)
from .base import LayerSolution, LayerwiseConfig, LayerwiseMethod, reestimate_bn

__all__ = ["LayerSolution", "LayerwiseConfig", "LayerwiseMethod", "reestimate_bn"]
