"""The Pareto plot reads: no label overlaps another, and a collapsed row is named, not drawn."""
from __future__ import annotations

import random
from itertools import combinations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from deepshrink.bench.plot import KEY_GID, LABEL_GID, NOTE_GID, draw_pareto, plot_pareto, split_collapsed  # noqa: E402

METHODS = ["dorefa", "lsq", "pact", "ldnq", "magnitude", "pq", "kmeans"]


def crowded_suite(n: int, sizes: list[float], low: float, high: float, seed: int = 0) -> list[dict]:
    """A full-precision row and `n` rows piled on a few sizes within a few points of each other."""
    rng = random.Random(seed)
    rows = [{"label": "full precision", "method": "fp32", "bytes": 1.1e6, "top1": 91.0}]
    for i in range(n):
        method = METHODS[i % len(METHODS)]
        rows.append({"label": f"{method} setting {i}", "method": method, "bytes": rng.choice(sizes),
                     "top1": rng.uniform(low, high)})
    return rows


def label_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    # the text alone: Annotation.get_window_extent would add its leader line
    return ax, [(t.get_text(), Text.get_window_extent(t, renderer))
                for t in ax.texts if t.get_gid() == LABEL_GID]


def assert_readable(fig, n_rows: int):
    ax, boxes = label_boxes(fig)
    assert len(boxes) == n_rows  # every drawn row is labelled
    for (a, box_a), (b, box_b) in combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"
    frame = ax.get_window_extent()
    for text, box in boxes:
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), f"{text!r} leaves the axes"
    return boxes


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_of_a_crowded_suite_do_not_overlap(seed):
    rows = crowded_suite(40, [60e3, 61e3, 62e3, 120e3, 121e3, 250e3], 84, 90, seed)
    fig = draw_pareto(rows, "crowded")
    try:
        assert_readable(fig, len(rows))
    finally:
        plt.close(fig)


def test_a_pile_too_dense_for_names_gets_numbers_and_a_key_naming_every_row():
    rows = crowded_suite(40, [60e3, 61e3, 62e3], 88, 90)
    fig = draw_pareto(rows, "one pile")
    try:
        boxes = assert_readable(fig, len(rows))
        assert sorted(int(text) for text, _ in boxes) == list(range(1, len(rows) + 1))
        key = next(t.get_text() for t in fig.texts if t.get_gid() == KEY_GID)
        for row in rows:
            assert row["label"] in key
    finally:
        plt.close(fig)


def test_a_collapsed_row_is_named_in_the_note_and_kept_off_the_axis():
    rows = crowded_suite(6, [60e3, 120e3], 84, 90)
    rows.append({"label": "BWN lr 0.1", "method": "bwn", "bytes": 35e3, "top1": 10.0})
    fig = draw_pareto(rows)
    try:
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert 80 < low < 84 and high > 91  # the axis spans the rows worth comparing, not 10%..91%
        assert ax.get_xlim()[0] > 35e3  # nor is its size on the x axis
        note = next(t.get_text() for t in fig.texts if t.get_gid() == NOTE_GID)
        assert "BWN lr 0.1 (10.0% at 35 KB)" in note
        assert all("BWN" not in text for text, _ in label_boxes(fig)[1])
    finally:
        plt.close(fig)


def test_no_note_when_nothing_collapsed():
    fig = draw_pareto(crowded_suite(5, [60e3], 85, 90))
    try:
        assert not [t for t in fig.texts if t.get_gid() == NOTE_GID]
    finally:
        plt.close(fig)


def test_collapse_rules_base_minus_30_points_and_twice_chance():
    base = {"method": "fp32", "top1": 40.0}
    near_chance = {"method": "bwn", "top1": 15.0}  # within 30 points of 40%, but under 2 x 10%
    fine = {"method": "lsq", "top1": 39.0}
    kept, collapsed, floor = split_collapsed([base, near_chance, fine], chance=10.0)
    assert collapsed == [near_chance] and floor == 20.0
    assert split_collapsed([base, near_chance, fine])[1] == []  # chance unknown: only base - 30 applies
    far_below = {"method": "pq", "top1": 59.9}
    assert split_collapsed([{"method": "fp32", "top1": 90.0}, far_below])[1] == [far_below]


def test_without_a_full_precision_row_the_best_row_is_the_reference():
    rows = [{"method": "lsq", "top1": 80.0}, {"method": "pq", "top1": 49.0}, {"method": "pact", "top1": 51.0}]
    assert split_collapsed(rows)[1] == [rows[1]]


def test_when_every_row_would_collapse_none_does():
    rows = [{"method": "lsq", "top1": 12.0}, {"method": "pq", "top1": 11.0}]
    kept, collapsed, _ = split_collapsed(rows, chance=10.0)
    assert kept == rows and collapsed == []


def test_plot_writes_a_png_and_skips_rows_without_figures(tmp_path):
    rows = crowded_suite(3, [60e3], 85, 90) + [{"label": "failed", "method": "pq", "bytes": None, "top1": None}]
    path = plot_pareto(rows, tmp_path / "pareto.png")
    assert path == tmp_path / "pareto.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_pareto([{"label": "failed", "bytes": None}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
