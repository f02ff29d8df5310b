"""`deepshrink recipes`: list the built-in recipes with their method and a one-line description.

The description is the recipe file's first comment line (`# ...`), so a new recipe documents itself.
"""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list built-in recipes",
                       description="List the built-in recipes (use their names with `compress --recipe`).")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, method, description}")
    p.set_defaults(func=run)


def recipe_summaries() -> list[dict]:
    """[{name, method, description}] of every built-in recipe, sorted by name."""
    import yaml

    from ..config import RECIPE_DIR, list_recipes

    rows = []
    for name in list_recipes():
        text = (RECIPE_DIR / f"{name}.yaml").read_text()
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        description = first.lstrip("#").strip() if first.startswith("#") else ""
        data = yaml.safe_load(text) or {}
        rows.append({"name": name, "method": str(data.get("method", "?")), "description": description})
    return rows


def run(args) -> int:
    rows = recipe_summaries()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    method_width = max((len(r["method"]) for r in rows), default=6)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['method']:<{method_width}}  {r['description']}")
    return 0
