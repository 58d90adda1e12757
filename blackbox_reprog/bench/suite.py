"""A suite file read and checked: its pairs, methods, budgets and seeds, and the cells they make.

What a suite file holds is described in ``blackbox_reprog.bench``'s docstring. Two optional axes
multiply the cells: ``shots`` (labelled examples per class, ``data.shots``; ``"all"`` or 0: every
one) and ``answers`` (what the model answers, through ``backend.output``: ``scores`` as it comes,
``probs``, ``top<k>`` such as ``top5``, ``label``) — the same model, told to answer less.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from ..run.config import ConfigError, RunConfig, flatten, load_config, merged
from ..errors import Refusal


BASELINES = ("zero", "scratch")
#: what an ``answers`` value sets: backend.output (and backend.k for ``top<k>``)
ANSWERS = {"scores": "", "probs": "probs", "label": "label"}
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
    shots: int | None = None             # None: the suite has no shots axis; 0: every example
    answers: str | None = None           # None: no answers axis, or a method that sends no query

    @property
    def key(self) -> str:
        """Its column in the results (``summary[pair][method][key]``): the budget, then the axes."""
        key = "any" if self.budget is None else str(self.budget)
        if self.shots is not None:
            key += f"-shots{self.shots or 'all'}"
        return key + (f"-{self.answers}" if self.answers is not None else "")

    @property
    def id(self) -> str:
        return f"{self.pair}/{self.method}/{self.key}-s{self.seed}"

    def record(self) -> dict:
        """Its fields for a record (results.json, cell.json), the axes only where the suite has them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "budget"}

    @classmethod
    def of(cls, record: dict) -> "Cell":
        return cls(*(record[k] for k in ("pair", "method", "budget", "seed")),
                   shots=record.get("shots"), answers=record.get("answers"))


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
    shots: tuple[int, ...] = ()          # the shots axis (0: every example); () none
    answers: tuple[str, ...] = ()        # the answers axis; () none

    @property
    def axes(self) -> bool:
        return bool(self.shots or self.answers)

    def cells(self) -> list[Cell]:
        cells = []
        for pair in self.pairs:
            for method in self.methods:
                budgets = (None,) if method.baseline else self.budgets
                # a network trained from scratch sends no query: what the model answers is no axis of it
                answers = (None,) if method.baseline == "scratch" or not self.answers else self.answers
                cells += [Cell(pair.name, method.name, b, s, shots=n, answers=a) for n in (self.shots or (None,))
                          for a in answers for b in budgets for s in self.seeds]
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
        if cell.shots is not None:
            layers.append({"data": {"shots": cell.shots}})
        if cell.answers is not None:
            layers.append({"backend": answers_settings(cell.answers)})
        return load_config(base=layers)

    def inapplicable(self, cell: Cell) -> str:
        """Why a method cannot run on a cell's answers ("" when it can): a map that needs scores
        on labels only. Recorded as skipped, with this reason; the suite itself is valid."""
        if cell.answers is None or ANSWERS.get(cell.answers) != "label":
            return ""
        from ..program.label_maps import LABEL_MAPS
        kind = self.config(cell, Path(".")).label_map.kind
        return f"label_map {kind!r} needs scores; label answers have none" if LABEL_MAPS.cls(kind).needs_scores else ""

    def missing(self, pair: Pair) -> str:
        """Why a pair's cells are skipped ("" when they run)."""
        if pair.requires and not Path(pair.requires).expanduser().exists():
            return f"{pair.requires} is absent" + (f" ({pair.install})" if pair.install else "")
        return ""


def answers_settings(name: str) -> dict:
    """An ``answers`` value as backend settings: ``top5`` → output "topk", k 5."""
    if name in ANSWERS:
        return {"output": ANSWERS[name]}
    match = re.fullmatch(r"top([1-9][0-9]*)", name) if isinstance(name, str) else None
    if not match:
        raise SuiteError(f"expected answers among {', '.join(ANSWERS)} or top<k> (e.g. top5), got {name!r}")
    return {"output": "topk", "k": int(match[1])}


def shots_text(shots: int) -> str:
    return "all" if shots == 0 else f"{shots} shot{'s' if shots != 1 else ''}"


# ---- reading a suite --------------------------------------------------------------------------
def load_suite(path: str | Path, *, check: bool = True) -> Suite:
    """Read and check a suite: a config is built (not run) for every cell but the seeds and
    budgets, which change nothing a config can refuse, before anything starts. ``check=False``:
    read it only (a worker running one cell of a suite already checked)."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as error:
        raise SuiteError(f"expected a readable suite file, got {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"expected a TOML suite file, got {path}: {error}") from None
    known = {"name", "description", "budgets", "seeds", "shots", "answers", "base", "pairs", "methods"}
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
                  description=str(table.get("description", "")), shots=_shots(table.get("shots", []), path),
                  answers=_answers(table.get("answers", []), path))
    if not check:
        return suite
    checked = set()
    for cell in suite.cells():
        representative = dataclasses.replace(cell, seed=suite.seeds[0],
                                             budget=None if cell.budget is None else max(suite.budgets))
        if representative in checked:
            continue
        checked.add(representative)
        try:
            suite.config(representative, Path("."))
        except ConfigError as error:
            raise SuiteError(f"expected a valid config for cell {cell.id} of {path}, got: {error}") from None
    return suite


def _shots(values, path: Path) -> tuple[int, ...]:
    shots = tuple(0 if v == "all" else v for v in values) if isinstance(values, list) else None
    if shots is None or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shots) \
            or len(set(shots)) < len(shots):
        raise SuiteError(f"expected shots, a list of distinct examples per class (\"all\" or 0: every one), "
                         f"got {values!r} in {path}")
    return shots


def _answers(values, path: Path) -> tuple[str, ...]:
    if not isinstance(values, list) or len(set(map(str, values))) < len(values):
        raise SuiteError(f"expected answers, a list of distinct kinds of answer, got {values!r} in {path}")
    for value in values:
        answers_settings(value)
    return tuple(values)


def restricted(suite: Suite, *, budgets: str | None = None, seeds: str | None = None,
               pairs: str | None = None, methods: str | None = None, shots: str | None = None,
               answers: str | None = None) -> Suite:
    """The suite with other budgets or seeds (comma-separated integers), or only some of its
    pairs, methods, shots or answers (comma-separated names; shots "all" or numbers)."""
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
    for what, text in (("shots", shots), ("answers", answers)):
        if text is None:
            continue
        # shots by number or "all"; answers by name
        known = {("all" if v == 0 else str(v)) if what == "shots" else v: v for v in getattr(suite, what)}
        wanted = [name.strip() for name in text.split(",") if name.strip()]
        if not wanted or any(name not in known for name in wanted):
            raise SuiteError(f"expected --{what} among {', '.join(known) or 'none (the suite has no such axis)'}, "
                             f"got {text!r}")
        suite = dataclasses.replace(suite, **{what: tuple(dict.fromkeys(known[name] for name in wanted))})
    return suite


def check_suite(suite: Suite) -> None:
    """Build every (pair, method) once, at the largest budget, without sending a query: an
    unknown estimator, a model the data does not fit, … refuse the suite before any cell runs
    (a budget too small for a method's one step only skips that cell)."""
    from ..data.splits import TooFewShots
    from ..run.runner import build
    from ..run.trainer import BudgetTooSmall
    built = set()
    for cell in suite.cells():
        # once per pair, method and kind of answer, at the fewest shots (the largest budget, the first seed)
        cell = dataclasses.replace(cell, seed=suite.seeds[0], shots=min(suite.shots, key=lambda n: n or 1e9)
                                   if suite.shots else None, budget=None if cell.budget is None else max(suite.budgets))
        if cell in built or suite.missing(suite.pair(cell.pair)) or suite.inapplicable(cell):
            continue
        built.add(cell)
        try:
            build(suite.config(cell, Path("."))).backend.close()
        except (BudgetTooSmall, TooFewShots):
            pass                                   # its cells are skipped, with the reason, when they run
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


