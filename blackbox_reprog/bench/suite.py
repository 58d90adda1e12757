"""A suite file read and checked: its pairs, methods, budgets and seeds, and the cells they make.

What a suite file holds is described in ``blackbox_reprog.bench``'s docstring.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from ..run.config import ConfigError, RunConfig, flatten, load_config, merged
from ..errors import Refusal


BASELINES = ("zero", "scratch")
EXECUTORS = ("process", "serial", "ray")


class SuiteError(Refusal):
    """A suite file that cannot run; raised before any cell starts."""


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    settings: dict                       # dotted config key -> value
    requires: str = ""                   # a path that must exist (a dataset package), else skipped
    install: str = ""                    # how to get it, for the report


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    settings: dict
    label: str = ""
    baseline: str = ""                   # "" (train a program at each budget), "zero" or "scratch"

    @property
    def black_box(self) -> bool:
        """A program trained from the model's answers alone (not a baseline, not the white-box bound)."""
        return not self.baseline and self.settings.get("train.method") != "whitebox"


@dataclasses.dataclass(frozen=True)
class Cell:
    pair: str
    method: str
    budget: int | None                   # None: a baseline, the same at every budget
    seed: int

    @property
    def id(self) -> str:
        return f"{self.pair}/{self.method}/{'any' if self.budget is None else self.budget}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    base: dict
    pairs: tuple[Pair, ...]
    methods: tuple[Method, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    description: str = ""

    def cells(self) -> list[Cell]:
        cells = []
        for pair in self.pairs:
            for method in self.methods:
                budgets = (None,) if method.baseline else self.budgets
                cells += [Cell(pair.name, method.name, b, s) for b in budgets for s in self.seeds]
        return cells

    def pair(self, name: str) -> Pair:
        return next(p for p in self.pairs if p.name == name)

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def config(self, cell: Cell, out: Path) -> RunConfig:
        """The cell's run config: base < pair < method < budget, seed, folder. Each is a layer:
        a component's parameters set in the base carry over to a kind the method names where
        that kind takes them (config.compose)."""
        layers = [self.base] + [merged([(key.split("."), value) for key, value in settings.items()])
                                for settings in (self.pair(cell.pair).settings, self.method(cell.method).settings)]
        # a baseline spends only its map fit and is measured at every budget that pays for it:
        # its run config's budget is no limit (it must only admit one step it never takes)
        budget = 10**12 if cell.budget is None else cell.budget
        layers.append({"seed": cell.seed, "budget": budget, "out": str(out), "name": "run"})
        return load_config(base=layers)

    def missing(self, pair: Pair) -> str:
        """Why a pair's cells are skipped ("" when they run)."""
        if pair.requires and not Path(pair.requires).expanduser().exists():
            return f"{pair.requires} is absent" + (f" ({pair.install})" if pair.install else "")
        return ""


# ---- reading a suite --------------------------------------------------------------------------
def load_suite(path: str | Path) -> Suite:
    """Read and check a suite: every cell's config is built (not run) before anything starts."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as error:
        raise SuiteError(f"expected a readable suite file, got {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"expected a TOML suite file, got {path}: {error}") from None
    known = {"name", "description", "budgets", "seeds", "base", "pairs", "methods"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SuiteError(f"expected suite keys among {', '.join(sorted(known))}, got {', '.join(unknown)} in {path}")
    budgets, seeds = table.get("budgets", []), table.get("seeds", [0])
    if not budgets or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in budgets):
        raise SuiteError(f"expected budgets, a list of positive integers, got {budgets!r} in {path}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise SuiteError(f"expected seeds, a list of distinct integers, got {seeds!r} in {path}")
    pairs = tuple(Pair(name, settings, requires=str(extra.get("requires", "")), install=str(extra.get("install", "")))
                  for name, settings, extra in _entries(table, "pairs", ("requires", "install"), path))
    methods = []
    for name, settings, extra in _entries(table, "methods", ("label", "baseline"), path):
        baseline = str(extra.get("baseline", ""))
        if baseline and baseline not in BASELINES:
            raise SuiteError(f"expected methods.{name}.baseline among {', '.join(BASELINES)}, got {baseline!r}")
        methods.append(Method(name, settings, label=str(extra.get("label", name)), baseline=baseline))
    suite = Suite(name=str(table.get("name", path.stem)), path=path, base=table.get("base", {}), pairs=pairs,
                  methods=tuple(methods), budgets=tuple(sorted(set(budgets))), seeds=tuple(seeds),
                  description=str(table.get("description", "")))
    for cell in suite.cells():
        try:
            suite.config(cell, Path("."))
        except ConfigError as error:
            raise SuiteError(f"expected a valid config for cell {cell.id} of {path}, got: {error}") from None
    return suite


def restricted(suite: Suite, *, budgets: str | None = None, seeds: str | None = None,
               pairs: str | None = None, methods: str | None = None) -> Suite:
    """The suite with other budgets or seeds (comma-separated integers), or only some of its
    pairs or methods (comma-separated names)."""
    def integers(text: str, what: str, positive: bool) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.replace("_", "").split(","))
        except ValueError:
            values = ()
        if not values or (positive and min(values) <= 0) or len(set(values)) < len(values):
            raise SuiteError(f"expected --{what} as comma-separated distinct {'positive ' if positive else ''}"
                             f"integers, got {text!r}")
        return values
    if budgets is not None:
        suite = dataclasses.replace(suite, budgets=tuple(sorted(set(integers(budgets, "budgets", True)))))
    if seeds is not None:
        suite = dataclasses.replace(suite, seeds=integers(seeds, "seeds", False))
    for what, names in (("pairs", pairs), ("methods", methods)):
        if names is None:
            continue
        known = {entry.name: entry for entry in getattr(suite, what)}
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in known]
        if unknown or not wanted:
            raise SuiteError(f"expected --{what} among {', '.join(known)}, got {names!r}")
        suite = dataclasses.replace(suite, **{what: tuple(known[name] for name in wanted)})
    return suite


def check_suite(suite: Suite) -> None:
    """Build every (pair, method) once, at the largest budget, without sending a query: an
    unknown estimator, a model the data does not fit, … refuse the suite before any cell runs
    (a budget too small for a method's one step only skips that cell)."""
    from ..run.runner import build
    from ..run.trainer import BudgetTooSmall
    for pair in suite.pairs:
        if suite.missing(pair):
            continue
        for method in suite.methods:
            cell = Cell(pair.name, method.name, None if method.baseline else max(suite.budgets), suite.seeds[0])
            try:
                build(suite.config(cell, Path("."))).backend.close()
            except BudgetTooSmall:
                pass                               # its cells are skipped, with the reason, when they run
            except Exception as error:
                raise SuiteError(f"expected cell {cell.id} of {suite.path} to build, got "
                                 f"{type(error).__name__}: {error}") from None


def _entries(table: dict, section: str, extras: tuple[str, ...], path: Path):
    entries = table.get(section)
    if not isinstance(entries, dict) or not entries:
        raise SuiteError(f"expected at least one [{section}.NAME] table in {path}, got none")
    for name, body in entries.items():
        if not isinstance(body, dict):
            raise SuiteError(f"expected [{section}.{name}] to be a table, got {body!r}")
        if "/" in name or name.startswith("."):
            raise SuiteError(f"expected a {section[:-1]} name usable as a folder name, got {name!r}")
        settings = {".".join(key): value for key, value in flatten({k: v for k, v in body.items() if k not in extras})}
        yield name, settings, {k: body[k] for k in extras if k in body}


