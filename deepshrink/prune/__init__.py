"""Pruning methods, one file per method (importing this package registers them).

    fbs       Feature Boosting and Suppression, dynamic per-sample channel pruning (fbs.py)
    coprune   Co-Prune, cross-domain magnitude pruning with source/target masks (coprune.py)
"""
from __future__ import annotations

import math


def planned_steps(ctx) -> int:
    """Optimizer steps `ctx.fit` will take (epochs x batches, capped by max_steps_per_epoch), for
    schedules that advance per step; 1 when the data has no length."""
    try:
        per_epoch = len(ctx.train_data)
    except TypeError:
        return 1
    if ctx.train.max_steps_per_epoch:
        per_epoch = min(per_epoch, ctx.train.max_steps_per_epoch)
    return max(1, math.ceil(ctx.train.epochs * per_epoch))


from . import coprune, fbs  # noqa: E402,F401  (import registers the methods and packables)
