"""The Pareto front of accuracy against packed size, and its plot.

A row is on the front when no other row is at least as small AND at least as accurate, and strictly
better in one of the two: those are the only rows worth choosing for some size budget.
"""
from __future__ import annotations

import math
from pathlib import Path

_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "8", "d", "H", "*"]


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


def plot_pareto(rows: list[dict], path, title: str = "") -> Path | None:
    """Draw top-1 against packed size (log x), one marker per method, the front as a staircase.

    `rows` are result records with `label`, `method`, `bytes`, `top1`; rows missing either figure
    are left out. Returns the written path, or None when no row has both figures.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if _finite(r.get("bytes")) and _finite(r.get("top1")) and r["bytes"] > 0]
    if not rows:
        return None
    methods = sorted({r.get("method", "?") for r in rows})
    style = {m: (_MARKERS[i % len(_MARKERS)], plt.get_cmap("tab20")(i % 20)) for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for method in methods:
        mine = [r for r in rows if r.get("method", "?") == method]
        marker, color = ("*", "black") if method == "fp32" else style[method]
        ax.scatter([r["bytes"] for r in mine], [r["top1"] for r in mine], marker=marker, color=color,
                   s=110 if method == "fp32" else 55, label=method, zorder=3, edgecolors="black", linewidths=0.4)
        for r in mine:
            ax.annotate(r.get("label", method), (r["bytes"], r["top1"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="dimgray")
    front = [rows[i] for i in pareto_front([(r["bytes"], r["top1"]) for r in rows])]
    ax.plot([r["bytes"] for r in front], [r["top1"] for r in front], drawstyle="steps-post", color="crimson",
            linewidth=1.2, alpha=0.8, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _human_bytes(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("packed file size (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy against packed size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a picture
    return path


def _human_bytes(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"
