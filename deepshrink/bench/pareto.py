"""The Pareto front of accuracy against packed size (its plot: `bench.plot`).

A row is on the front when no other row is at least as small AND at least as accurate, and strictly
better in one of the two: those are the only rows worth choosing for some size budget.
"""
from __future__ import annotations

import math


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (size: smaller is better, accuracy: larger is better),
    ordered by size. Points with a missing or non-finite coordinate are never on the front.

    Example::

        pareto_front([(10, 80), (20, 79), (30, 90)])  # -> [0, 2]: (20, 79) is dominated by (10, 80)
    """
    usable = [i for i, (size, acc) in enumerate(points) if _finite(size) and _finite(acc)]
    # smallest first; at equal size the most accurate first, so it dominates the others of that size
    usable.sort(key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in usable:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
