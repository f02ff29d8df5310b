"""Pruning methods, one file per method (importing this package registers them).

    fbs       Feature Boosting and Suppression, dynamic per-sample channel pruning (fbs.py)
    coprune   Co-Prune, cross-domain magnitude pruning with source/target masks (coprune.py)
"""
from . import fbs  # noqa: F401  (import registers the method and the FBSBlock packable)

