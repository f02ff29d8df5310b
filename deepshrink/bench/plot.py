"""The Pareto plot: top-1 against packed size, drawn so a person can read it.

- Labels never overlap each other or a marker: each is put at the first free spot on rings of growing
  radius around its point, with a leader line once it sits away from it. When the full labels do not
  all fit near their points, the points get numbers instead and a key beside the plot names them.
- A collapsed row (top-1 more than `COLLAPSE_DROP` points below the reference, or below twice chance)
  is not drawn: it would squash the y axis until the rows worth comparing merge into one line. It is
  named, with its figures, in a note under the plot.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from .pareto import _finite, pareto_front

COLLAPSE_DROP = 30.0  # points of top-1 below the reference row that mark a row as collapsed
LABEL_GID = "pareto-label"  # the gid of every point label, so tests and tools can find them
NOTE_GID = "pareto-collapsed"
KEY_GID = "pareto-key"

_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "8", "d", "H", "*"]
_FONT = 7  # points, labels and key
_NEAR_RADII = (2, 6, 12, 20)  # points from the marker's edge: close enough to read a full label
_FAR_RADII = (30, 45, 65, 90, 120, 160, 220, 300)
_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1),
               (2, 1), (2, -1), (-2, 1), (-2, -1), (1, 2), (1, -2), (-1, 2), (-1, -2)]


def split_collapsed(rows: list[dict], chance: float | None = None,
                    drop: float = COLLAPSE_DROP) -> tuple[list[dict], list[dict], float]:
    """(rows to draw, collapsed rows, the top-1 floor between them).

    The reference is the full-precision row (`method == "fp32"`) when there is one, else the most
    accurate row; a row below `reference - drop`, or below `2 * chance` (top-1 in %, e.g. 10 for ten
    classes), has collapsed. When every row would collapse, none does: there is nothing to compare.

    Example::

        split_collapsed([{"method": "fp32", "top1": 90}, {"top1": 85}, {"top1": 10}])[1]  # -> [{"top1": 10}]
    """
    base = next((r["top1"] for r in rows if r.get("method") == "fp32"), None)
    reference = base if base is not None else max(r["top1"] for r in rows)
    floor = max(reference - drop, 2 * chance if chance else -math.inf)
    kept = [r for r in rows if r["top1"] >= floor]
    if not kept:
        return list(rows), [], -math.inf
    return kept, [r for r in rows if r["top1"] < floor], floor


def draw_pareto(rows: list[dict], title: str = "", chance: float | None = None, ylabel: str = "top-1 accuracy (%)"):
    """The figure `plot_pareto` saves (matplotlib Agg), returned open so a caller can inspect it.

    Point labels carry the gid `LABEL_GID`, the collapsed-row note `NOTE_GID`, the numbered key
    `KEY_GID`. Returns None when no row has both a positive size and a top-1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if _finite(r.get("bytes")) and _finite(r.get("top1")) and r["bytes"] > 0]
    if not rows:
        return None
    drawn, collapsed, floor = split_collapsed(rows, chance)
    drawn.sort(key=lambda r: (r["bytes"], -r["top1"], r.get("label", "")))
    note = _collapsed_note(collapsed, floor, rows, chance)
    methods = sorted({r.get("method", "?") for r in drawn})
    key_lines = len(drawn) + len(methods) + 2
    fig = plt.figure(figsize=(11.5, max(5.5, 0.13 * key_lines + 1.5)), dpi=110)
    bottom = (0.55 + 0.16 * len(note)) / fig.get_figheight()  # room for the x label and the note
    ax = fig.add_axes((0.07, bottom, 0.75, 0.92 - bottom))
    _scatter(ax, drawn, methods, plt.get_cmap("tab20"))
    _set_axes(ax, drawn, title, ylabel)
    renderer = fig.canvas.get_renderer()
    labelled = _label_points(ax, renderer, drawn, [r.get("label", r.get("method", "?")) for r in drawn],
                             _NEAR_RADII)
    if not labelled:  # numbers, and their names in a key: the plot narrows to make room for it
        ax.set_position((0.07, bottom, 0.56, 0.92 - bottom))
        _label_points(ax, renderer, drawn, [str(i) for i in range(1, len(drawn) + 1)], _NEAR_RADII + _FAR_RADII,
                      force=True)
    legend = fig.legend(fontsize=_FONT, loc="upper left", bbox_to_anchor=(0.84 if labelled else 0.65, 0.92),
                        frameon=False)
    if not labelled:
        _draw_key(fig, renderer, legend, drawn)
    if note:
        fig.text(0.07, 0.02, "\n".join(note), fontsize=_FONT, color="firebrick", va="bottom", gid=NOTE_GID)
    return fig


def plot_pareto(rows: list[dict], path, title: str = "", chance: float | None = None,
                ylabel: str = "top-1 accuracy (%)") -> Path | None:
    """Draw top-1 against packed size (log x), one marker per method, the front as a staircase.

    `rows` are result records with `label`, `method`, `bytes`, `top1`; rows missing either figure
    are left out; collapsed rows (see `split_collapsed`; `chance` is top-1 % by guessing) are named
    in a note instead of drawn; `ylabel` names what `top1` holds (a suite without labels plots agreement
    with the float model there). Returns the written path, or None when no row has both figures.

    Example::

        plot_pareto([{"label": "fp32", "method": "fp32", "bytes": 1e6, "top1": 91.0}], "pareto.png")
    """
    import matplotlib.pyplot as plt

    fig = draw_pareto(rows, title, chance, ylabel)
    if fig is None:
        return None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)  # no bbox_inches="tight": labels were placed for exactly this layout
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a picture
    return path


def _scatter(ax, rows: list[dict], methods: list[str], cmap) -> None:
    for i, method in enumerate(methods):
        mine = [r for r in rows if r.get("method", "?") == method]
        marker, color = ("*", "black") if method == "fp32" else (_MARKERS[i % len(_MARKERS)], cmap(i % 20))
        ax.scatter([r["bytes"] for r in mine], [r["top1"] for r in mine], marker=marker, color=color,
                   s=_marker_area(method), label=method, zorder=3, edgecolors="black", linewidths=0.4)
    front = [rows[i] for i in pareto_front([(r["bytes"], r["top1"]) for r in rows])]
    ax.plot([r["bytes"] for r in front], [r["top1"] for r in front], drawstyle="steps-post", color="crimson",
            linewidth=1.2, alpha=0.8, label="Pareto front", zorder=2)


def _marker_area(method: str) -> float:
    return 110 if method == "fp32" else 55  # points squared, as scatter's `s`


def _set_axes(ax, rows: list[dict], title: str, ylabel: str) -> None:
    """Fix both limits now: labels are placed in pixels, so the axes must not move afterwards."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    sizes = [r["bytes"] for r in rows]
    ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
    top1 = [r["top1"] for r in rows]
    pad = max(1.0, 0.12 * (max(top1) - min(top1)))
    ax.set_ylim(min(top1) - pad, max(top1) + pad)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _human_bytes(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("packed file size (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "accuracy against packed size", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _label_points(ax, renderer, rows: list[dict], texts: list[str], radii, force: bool = False) -> bool:
    """Annotate each row with its text at the first spot (ring by ring) that overlaps no other label
    and no marker and stays inside the axes. Returns False, drawing nothing, when some label finds no
    spot and `force` is not set; with `force` such a label goes to its last candidate spot."""
    to_px = ax.figure.dpi / 72
    anchors = ax.transData.transform([(r["bytes"], r["top1"]) for r in rows])
    markers = [_box(x, y, math.sqrt(_marker_area(r.get("method", "?"))) / 2 * to_px, None)
               for (x, y), r in zip(anchors, rows)]
    frame = ax.bbox
    placed, spots = [], []
    for (x, y), text, row in zip(anchors, texts, rows):
        probe = ax.text(0, 0, text, fontsize=_FONT)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        half_w, half_h = extent.width / 2 + 1, extent.height / 2 + 1  # a pixel of air around each label
        gap = math.sqrt(_marker_area(row.get("method", "?"))) / 2 * to_px
        spot = None
        for radius in radii:
            for dx, dy in _DIRECTIONS:
                norm = math.hypot(dx, dy)
                ux, uy = dx / norm, dy / norm
                cx = x + ux * (gap + radius * to_px + half_w)
                cy = y + uy * (gap + radius * to_px + half_h)
                box = _box(cx, cy, half_w, half_h)
                inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
                if inside and not any(_overlap(box, other) for other in placed + markers):
                    spot = (cx, cy, radius)
                    break
            if spot:
                break
        if spot is None:
            if not force:
                return False
            spot = (cx, cy, radius)
        placed.append(_box(spot[0], spot[1], half_w, half_h))
        spots.append(spot)
    for (x, y), text, (cx, cy, radius), row in zip(anchors, texts, spots, rows):
        leader = dict(arrowstyle="-", color="0.55", linewidth=0.5, shrinkA=0, shrinkB=3) if radius > 6 else None
        ax.annotate(text, (row["bytes"], row["top1"]), xytext=((cx - x) / to_px, (cy - y) / to_px),
                    textcoords="offset points", ha="center", va="center", fontsize=_FONT, color="0.25",
                    arrowprops=leader, gid=LABEL_GID, annotation_clip=False, zorder=4,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75))
    return True


def _box(cx: float, cy: float, half_w: float, half_h: float | None) -> tuple[float, float, float, float]:
    half_h = half_w if half_h is None else half_h
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_key(fig, renderer, legend, rows: list[dict]) -> None:
    """The numbered points' names beside the plot, under the method legend."""
    legend_bottom = fig.transFigure.inverted().transform(legend.get_window_extent(renderer).p0)[1]
    lines = ["#   top-1   size      row"]
    for i, r in enumerate(rows, 1):
        label = str(r.get("label", r.get("method", "?")))
        label = label if len(label) <= 38 else label[:37] + "…"
        lines.append(f"{i:<3} {r['top1']:5.1f}   {_human_bytes(r['bytes']):<9} {label}")
    fig.text(0.655, legend_bottom - 0.02, "\n".join(lines), fontsize=_FONT, family="monospace", va="top",
             gid=KEY_GID)


def _collapsed_note(collapsed: list[dict], floor: float, rows: list[dict], chance: float | None) -> list[str]:
    if not collapsed:
        return []
    base = next((r for r in rows if r.get("method") == "fp32"), None)
    reference = base.get("label", "full precision") if base else "the best row"
    rule = "2× chance" if chance and floor == 2 * chance else f"{reference} − {COLLAPSE_DROP:g} points"
    names = ", ".join(f"{r.get('label', r.get('method', '?'))} ({r['top1']:.1f}% at {_human_bytes(r['bytes'])})"
                      for r in sorted(collapsed, key=lambda r: r["bytes"]))
    text = f"Not drawn, collapsed (top-1 below {floor:.1f}%, {rule}): {names}"
    return textwrap.wrap(text, 150)


def _human_bytes(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} B"
