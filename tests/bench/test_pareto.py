"""The Pareto front of (packed size, top-1) on hand-made points."""
from __future__ import annotations

import math

from deepshrink.bench import pareto_front


def test_dominated_points_are_off_the_front():
    points = [(10, 80.0), (20, 79.0), (30, 90.0), (40, 85.0), (5, 60.0)]
    # (20, 79) is beaten by (10, 80); (40, 85) by (30, 90)
    assert pareto_front(points) == [4, 0, 2]


def test_equal_size_keeps_only_the_most_accurate():
    assert pareto_front([(10, 70.0), (10, 75.0), (20, 75.0)]) == [1]


def test_equal_accuracy_keeps_only_the_smallest():
    assert pareto_front([(30, 90.0), (10, 90.0)]) == [1]


def test_missing_or_nan_figures_are_never_on_the_front():
    points = [(None, 99.0), (10, math.nan), (20, 50.0), (math.inf, 99.9)]
    assert pareto_front(points) == [2]
    assert pareto_front([]) == []


def test_front_matches_brute_force_definition():
    import random

    rng = random.Random(0)
    points = [(rng.randint(1, 30), rng.randint(50, 60)) for _ in range(60)]
    front = set(pareto_front(points))
    for i, (s, a) in enumerate(points):
        dominated = any(s2 <= s and a2 >= a and (s2, a2) != (s, a) for s2, a2 in points)
        duplicate_earlier = any(points[j] == (s, a) for j in range(i))
        assert (i in front) == (not dominated and not duplicate_earlier), (i, s, a)
