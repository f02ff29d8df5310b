"""Turn a suite into the concrete rows to run: full-precision row first, recipes resolved, keys computed.

A row's key is a hash of everything that changes its result: the model, data set (with how its images
are drawn and prepared, when the suite says) and seed of the suite, the base checkpoint's content, the
method and its fully resolved recipe (defaults filled in, `--set` overrides and the budget applied).
Change any of them and the row runs again; change nothing and a finished row is never recomputed. A row's
measures are not in its key: they observe the row without changing what it computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..spec import plain_values
from .suite import BASELINE, RowSpec, Suite, stable_hash


@dataclass
class PlannedRow:
    """A row ready to run. `error` is set when its recipe could not be resolved (it is recorded as failed)."""

    spec: RowSpec
    label: str
    key: str
    recipe_source: object = None
    overrides: list = field(default_factory=list)
    recipe: dict | None = None  # the resolved recipe (Recipe.to_dict()); None for the full-precision row
    error: str | None = None
    measures: dict = field(default_factory=dict)  # measure name -> settings (the suite's and the row's)

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def is_baseline(self) -> bool:
        return self.spec.method == BASELINE

    def settings(self) -> dict:
        """What the results file records about how this row was configured."""
        return {"recipe_source": self.recipe_source, "overrides": self.overrides, "recipe": self.recipe}


def plan_rows(suite: Suite, base_id: str, *, only=None, epochs=None, methods=None) -> list[PlannedRow]:
    """The suite's rows in run order: the full-precision reference, then the listed rows, then (with
    `all_methods`) a default row for every registered method the suite does not list.

    A row of method `fp32` in the suite stands in for the automatic reference row (its label, its measures).
    `only` keeps the rows of those methods, shipped recipe names or labels (a list, or text separated by
    commas, e.g. "lsq,dorefa-w8a8"; text that is one row's whole label, commas and all, is that row); the
    full-precision row is always kept: every drop is measured against it; `epochs` replaces every row's fine-tune budget; `methods` is the
    list of registered method names (default: the registry's).
    """
    if methods is None:
        from ..registry import list_methods

        methods = list_methods()
    # a suite may list the full-precision row itself, to give it a label or measures of its own
    listed = next((s for s in suite.rows if s.method == BASELINE), None)
    specs = [listed or RowSpec(BASELINE, label="full precision")] + [s for s in suite.rows if s is not listed]
    if suite.all_methods:
        listed = {s.method for s in specs}
        specs += [RowSpec(m) for m in methods if m not in listed]
    if only:
        if isinstance(only, str):  # --only's text: comma-separated, unless it is one label that has commas
            whole = only.strip().lower()
            only = [only] if any(whole in _names(s) for s in specs) else only.split(",")
        wanted = {m.strip().lower() for m in only if m.strip()}
        unknown = wanted - {name for s in specs for name in _names(s)}
        if unknown:
            raise UserError(f"--only: no row of method, recipe or label {sorted(unknown)} in suite {suite.name!r}; "
                            f"its methods: {', '.join(sorted({s.method for s in specs}))}")
        specs = [s for s in specs if s.method == BASELINE or wanted & _names(s)]
    planned, seen = [], set()
    for spec in specs:
        row = _plan(suite, spec, base_id, epochs, methods)
        row.measures = suite.row_measures(spec)
        if row.key not in seen:  # two rows with identical settings are one row
            planned.append(row)
            seen.add(row.key)
    return planned


def _names(spec: RowSpec) -> set[str]:
    """What `--only` matches a row by: its method, the shipped recipe it names (e.g. dorefa-w8a8), its label."""
    return {spec.method, _label_of(spec).lower()} | ({spec.recipe.lower()} if isinstance(spec.recipe, str) else set())


def _plan(suite: Suite, spec: RowSpec, base_id: str, epochs, methods) -> PlannedRow:
    shared = {**suite.identity(), "base": base_id, "method": spec.method}
    if spec.method == BASELINE:
        return PlannedRow(spec, spec.label or "full precision", stable_hash(shared))
    budget = {**suite.budget, **spec.budget}
    if epochs is not None:
        budget["epochs"] = epochs
    # the suite's seed decides every row's training order, initial state and calibration draw
    overrides = [f"train.seed={suite.seed}", f"calib.seed={suite.seed}"] + \
        RowSpec(spec.method, budget=budget, set=spec.set).overrides()
    source = spec.recipe if spec.recipe is not None else default_recipe(spec.method)
    label = _label_of(spec)
    try:
        if spec.method not in methods:
            raise UserError(f"method {spec.method!r} is not registered; registered: {', '.join(methods)}")
        from ..config import load_recipe

        recipe = load_recipe(source, overrides)
        if recipe.method != spec.method:
            raise UserError(f"recipe {source!r} is for method {recipe.method!r}, the row says {spec.method!r}")
        resolved = plain_values(recipe.to_dict())
        return PlannedRow(spec, label, stable_hash({**shared, "recipe": resolved}), source, overrides, resolved)
    except Exception as exc:  # noqa: BLE001 - a bad row is recorded as failed; the suite goes on
        key = stable_hash({**shared, "source": source, "overrides": overrides})
        return PlannedRow(spec, label, key, source, overrides, error=f"{type(exc).__name__}: {exc}")


def default_recipe(method: str):
    """The method's built-in recipe when deepshrink ships one named after it, else its defaults (by name,
    where `config.method_default` gives the CLI the file's path)."""
    from ..config import list_recipes

    return method if method in list_recipes() else {"method": method}


def _label_of(spec: RowSpec) -> str:
    return spec.label or _auto_label(spec)


def _auto_label(spec: RowSpec) -> str:
    params = [o.split(".", 1)[1] if o.startswith("params.") else o for o in spec.set if not o.startswith("train.")]
    return " ".join([spec.method] + params)

