"""Where data sets live: an explicit root, else the `DEEPSHRINK_DATA` search path, else well-known places.

Search order for data set `name` (first match wins)::

    1. root=... / --data-root            (only this place when given)
    2. each entry E of $DEEPSHRINK_DATA  (colon-separated): E/<name>, E/<alias>, E itself
    3. /usr/share/datasets/<name>        (Debian: dataset-fashion-mnist)
    4. $DEEPSHRINK_CACHE or ~/.cache/deepshrink, /<name> and /<alias>
    5. ./data/<name>, ./data/<alias>

When nothing matches, the error lists every place searched and how to fix it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import UserError


def cache_dir() -> Path:
    """deepshrink's cache folder: `$DEEPSHRINK_CACHE`, else `~/.cache/deepshrink`."""
    return Path(os.environ.get("DEEPSHRINK_CACHE", Path.home() / ".cache" / "deepshrink")).expanduser()


def candidate_roots(name: str, aliases: tuple[str, ...] = ()) -> list[Path]:
    """Every place searched for `name` when no root is given, in order."""
    names = (name, *aliases)
    places: list[Path] = []
    for entry in os.environ.get("DEEPSHRINK_DATA", "").split(":"):
        if entry.strip():
            base = Path(entry.strip()).expanduser()
            places += [base / n for n in names] + [base]
    places += [Path("/usr/share/datasets") / n for n in names]
    places += [cache_dir() / n for n in names]
    places += [Path("data").resolve() / n for n in names]
    unique: list[Path] = []
    for place in places:
        if place not in unique:
            unique.append(place)
    return unique


def find_root(name: str, split: str, probe: Callable[[Path, str], bool], root: str | Path | None = None,
              aliases: tuple[str, ...] = (), expected: str = "", download_hint: bool = True) -> Path:
    """The first place holding `split` of `name` according to `probe(path, split)`.

    Raises `UserError` listing every place searched, what files were expected there, and the fixes.
    """
    places = [Path(root).expanduser()] if root is not None else candidate_roots(name, aliases)
    for place in places:
        if place.is_dir() and probe(place, split):
            return place
    raise UserError(not_found_message(name, split, places, expected, explicit=root is not None,
                                      download_hint=download_hint))


def not_found_message(name: str, split: str, places: list[Path], expected: str, explicit: bool,
                      download_hint: bool) -> str:
    """The one message a user sees when data set `name` is nowhere to be found."""
    searched = "; ".join(f"{p} ({'exists, no match' if p.is_dir() else 'missing'})" for p in places)
    fixes = [f"pass --data-root DIR (root=DIR) pointing at the folder that holds {expected or 'the files'}"]
    if not explicit:
        fixes.append("or add that folder's parent to DEEPSHRINK_DATA (colon-separated)")
    if name == "fashion-mnist":
        fixes.append("or `apt-get install dataset-fashion-mnist`")
    if download_hint:
        fixes.append("or add --download (download=True) to fetch the official files")
    return (f"{name} ({split} split) not found. Searched: {searched}. Fix: {', '.join(fixes)}.")
