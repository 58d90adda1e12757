"""Query-budget benchmarks: ``bbreprog bench SUITE.toml``.

A suite answers one question — for a given number of paid queries, which method gives the
best target accuracy, and is reprogramming worth it against the cheap baselines? It names
source → target *pairs*, *methods*, *budgets* and *seeds*; every (pair, method, budget,
seed) is one *cell*, a run of its own in ``OUT/cells/``. Baselines that do not train a
program (``baseline = "zero"``: the map fitted to the zero program; ``baseline =
"scratch"``: a small network trained on the target data, no query) do not depend on the
budget and run once per seed.

A suite file::

    name = "signal"
    budgets = [1_000, 10_000, 100_000]
    seeds = [0, 1, 2]
    [base]                                # every cell's config starts from this
    backend = { name = "onnx", model = "crepe-tiny" }
    transform = { kind = "signal", grid = 64 }
    [pairs.Coffee]                        # config keys, dotted
    data.name = "Coffee"
    [methods.linear-head]
    label = "linear head, zero program"
    baseline = "zero"
    label_map.kind = "linear"
    [methods.zo-random]
    estimator.kind = "random"

A pair may say ``requires = "/path"`` (and ``install = "how"``): when the path is absent its
cells are skipped, and the report says why. Each finished cell writes ``cell.json`` with a
digest of its config; running the suite again skips those, so a half-finished suite resumes
(a cell whose config changed runs again). ``cells/`` is not committed, but ``results.json``
lists the finished cells: in a fresh clone their ``cell.json`` are written back from it, so
running more cells there keeps the committed results. Results: ``results.json``,
``results.md`` and one ``<pair>.png`` of test accuracy (mean ± std over seeds) against queries.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

from .config import ConfigError, RunConfig, _flatten, load_config, merge, to_toml, with_absolute_paths
from .errors import Refusal
from .files import atomic_write
from .journal import JOURNAL

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
        """The cell's run config: base < pair < method < budget, seed, folder."""
        values: dict = {}
        for key, value in _flatten(self.base):
            values = merge(values, key, value)
        for settings in (self.pair(cell.pair).settings, self.method(cell.method).settings):
            for key, value in settings.items():
                values = merge(values, key.split("."), value)
        # a baseline spends only its map fit and is measured at every budget that pays for it:
        # its run config's budget is no limit (it must only admit one step it never takes)
        budget = 10**12 if cell.budget is None else cell.budget
        values.update(seed=cell.seed, budget=budget, out=str(out), name="run")
        return load_config(base=values)

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
    from .runner import build
    from .trainer import BudgetTooSmall
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
        settings = {".".join(key): value for key, value in _flatten({k: v for k, v in body.items() if k not in extras})}
        yield name, settings, {k: body[k] for k in extras if k in body}


# ---- running one cell (in a worker process) --------------------------------------------------
def cell_digest(config: RunConfig, baseline: str) -> str:
    """What makes a cell's result: its whole config but the folder it is written to, and what
    is done with it (a baseline or a trained program)."""
    text = f"baseline = {baseline!r}\n" + to_toml(dataclasses.replace(config, out="", name=""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_cell(suite_path: str, cell: Cell, out: str, report: Callable[[str, dict], None] | None = None) -> dict:
    """Run one cell into ``out/cells/<id>`` and return its record (also written as cell.json)."""
    suite = load_suite(suite_path)
    folder = Path(out) / "cells" / cell.id
    config = suite.config(cell, folder)
    method = suite.method(cell.method)
    record = {**dataclasses.asdict(cell), "id": cell.id, "config_digest": cell_digest(config, method.baseline)}
    # a trained cell cut short by an earlier run of the suite resumes from its journal (what it
    # paid for is read back); anything else cut short starts again
    resume = (not method.baseline and (folder / JOURNAL).is_file() and (folder / "config.toml").is_file()
              and (folder / "config.toml").read_text() == to_toml(with_absolute_paths(config)))
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if method.baseline == "scratch":
        from .data import make_splits
        from .scratch import train_from_scratch
        splits = make_splits(config.data.name, validation_fraction=config.data.validation_fraction,
                             test_fraction=config.data.test_fraction, seed=config.seed)
        outcome = train_from_scratch(splits, seed=config.seed)
        record.update(test_accuracy=outcome["test_accuracy"], queries=0, test_queries=0, steps=outcome["epochs"],
                      detail=outcome)
    elif method.baseline == "zero":
        from .runner import build
        components = build(config)
        try:
            outcome = components.trainer.zero_program()
        finally:
            components.backend.close()
        record.update(test_accuracy=outcome["test_accuracy"], queries=outcome["ledger"]["budgeted"],
                      test_queries=outcome["ledger"]["test"]["queries"], steps=0)
    else:
        from .runner import Run
        from .trainer import BudgetTooSmall

        def progress(row: dict) -> None:
            if report:
                report(cell.id, {"queries": row["queries"], "budget": config.budget, "step": row["step"]})

        try:
            job = Run(config, progress=progress)
        except BudgetTooSmall as error:            # this method's one step costs more than the budget
            shutil.rmtree(folder)
            return {**record, "status": "skipped", "reason": str(error)}
        _, summary = job.execute(folder, resume=resume, plot=False)
        record.update(test_accuracy=summary["test_accuracy"], start_accuracy=summary["start_accuracy"],
                      queries=summary["budgeted_queries"], test_queries=summary["queries"]["test"],
                      steps=summary["steps"], stopped=summary["stopped"])
    record.update(status="done", wall_seconds=round(time.perf_counter() - started, 2))
    write_cell_record(folder, record)
    return record


def write_cell_record(folder: Path, record: dict) -> None:
    atomic_write(folder / "cell.json", (json.dumps(record, indent=1) + "\n").encode())


def finished_record(suite: Suite, cell: Cell, out: Path) -> dict | None:
    """The cell's record from an earlier run of the suite, if it finished with the same config."""
    path = out / "cells" / cell.id / "cell.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    config = suite.config(cell, out / "cells" / cell.id)
    digest = cell_digest(config, suite.method(cell.method).baseline)
    return record if record.get("status") == "done" and record.get("config_digest") == digest else None


def restore_recorded_cells(out: Path) -> int:
    """Write back the ``cell.json`` of every finished cell that ``out/results.json`` lists and
    whose folder is absent (a fresh clone: ``cells/`` is not committed); return how many.
    Their config digests are checked later, as for any finished cell."""
    try:
        cells = json.loads((out / "results.json").read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return 0
    root = (out / "cells").resolve()
    restored = 0
    for record in cells:
        if not (isinstance(record, dict) and record.get("status") == "done" and isinstance(record.get("id"), str)):
            continue
        folder = (root / record["id"]).resolve()
        if len(Path(record["id"]).parts) != 3 or not folder.is_relative_to(root) or folder.exists():
            continue                               # a pair/method/budget-seed id only, and never over a folder
        folder.mkdir(parents=True)
        write_cell_record(folder, record)
        restored += 1
    return restored


# ---- running a suite --------------------------------------------------------------------------
def run_suite(suite: Suite, out: Path, *, jobs: int = 0, executor: str = "process",
              on_event: Callable[[str, str, dict], None] | None = None, report_only: bool = False) -> dict:
    """Run every cell not already finished, ``jobs`` at a time; write the results; return them.
    A cell that fails is recorded as failed (its error in one line) and the others go on.
    ``report_only``: run nothing, write the results of the cells finished by earlier commands
    (the others are "not run"). ``on_event(kind, cell_id, info)`` hears "start", "progress",
    "done", "skipped", "failed", "resumed"."""
    if executor not in EXECUTORS:
        raise SuiteError(f"expected an executor among {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        _ray()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "suite.toml").exists() or not (out / "suite.toml").samefile(suite.path):
        shutil.copyfile(suite.path, out / "suite.toml")
    event = on_event or (lambda *args: None)
    restore_recorded_cells(out)
    records: dict[str, dict] = {}
    todo = []
    for cell in suite.cells():
        record = finished_record(suite, cell, out)
        reason = suite.missing(suite.pair(cell.pair))
        if reason:
            records[cell.id] = {**dataclasses.asdict(cell), "id": cell.id, "status": "skipped", "reason": reason}
            event("skipped", cell.id, records[cell.id])
        elif record is not None:
            records[cell.id] = record
            event("resumed", cell.id, record)
        elif report_only:
            records[cell.id] = {**dataclasses.asdict(cell), "id": cell.id, "status": "not run"}
        else:
            todo.append(cell)
    jobs = jobs or os.cpu_count() or 1
    started = time.perf_counter()
    run = {"process": _in_processes, "serial": _in_this_process, "ray": _in_ray}[executor]
    ran = 0
    for record in run(suite, todo, out, jobs, event):
        records[record["id"]] = record
        ran += record["status"] == "done"
        event(record["status"], record["id"], record)
    if ran:                                       # the commands behind the cells, for the results' readers
        with open(out / "commands.log", "a") as log:
            log.write(f"{datetime.date.today().isoformat()}  {command_line() or 'run_suite()'}\n")
    results = summarise(suite, [records[c.id] for c in suite.cells()], out)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ran"] = ran                          # cells finished now; the others finished before or were not run
    write_results(suite, results, out)
    return results


def failed(cell: Cell, error: BaseException) -> dict:
    """The record of a cell whose run raised (or whose worker died)."""
    return {**dataclasses.asdict(cell), "id": cell.id, "status": "failed",
            "reason": f"{type(error).__name__}: {error}".strip().splitlines()[0]}


def _in_this_process(suite, cells, out, jobs, event):
    for cell in cells:
        event("start", cell.id, {})
        try:
            yield run_cell(str(suite.path), cell, str(out), lambda cid, info: event("progress", cid, info))
        except Exception as error:
            yield failed(cell, error)


def _in_processes(suite, cells, out, jobs, event):
    """A pool of ``jobs`` fresh (spawned) processes; progress comes back through a queue."""
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")      # torch and threads do not survive fork well
    with context.Manager() as manager, ProcessPoolExecutor(
            max_workers=min(jobs, max(len(cells), 1)), mp_context=context,
            initializer=_worker_init, initargs=(jobs,)) as pool:
        messages = manager.Queue()
        pending = {pool.submit(_run_cell_reporting, str(suite.path), cell, str(out), messages): cell for cell in cells}
        for cell in cells:
            event("queued", cell.id, {})
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    kind, cell_id, info = messages.get_nowait()
                except queue_module.Empty:
                    break
                event(kind, cell_id, info)
            for future in done:
                cell = pending.pop(future)
                try:
                    yield future.result()
                except Exception as error:         # the cell raised, or its worker died (BrokenProcessPool)
                    yield failed(cell, error)


def _worker_init(jobs: int) -> None:
    """Share the cores between the workers instead of each taking them all."""
    import torch
    threads = max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _run_cell_reporting(suite_path: str, cell: Cell, out: str, messages) -> dict:
    messages.put(("start", cell.id, {}))
    return run_cell(suite_path, cell, out, lambda cell_id, info: messages.put(("progress", cell_id, info)))


def _in_ray(suite, cells, out, jobs, event):
    """Each cell a Ray task (``ray.init()`` joins a running cluster, else starts a local one);
    each optimizer stays in its one task, asking for its candidates in batches."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    task = ray.remote(num_cpus=1)(run_cell)
    pending = {task.remote(str(suite.path.resolve()), cell, str(out.resolve())): cell for cell in cells}
    for cell in cells:
        event("queued", cell.id, {})
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            cell = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as error:
                yield failed(cell, error)


def _ray():
    try:
        import ray
    except ImportError:
        raise SuiteError("expected Ray installed for --executor ray (pip install 'blackbox-reprog[ray]'), "
                         "got no module named ray") from None
    return ray


# ---- results ----------------------------------------------------------------------------------
def summarise(suite: Suite, records: list[dict], out: Path) -> dict:
    """Per pair, method and budget: test accuracy mean ± std over seeds and queries spent."""
    table: dict = {}
    for pair in suite.pairs:
        table[pair.name] = {}
        for method in suite.methods:
            rows = [r for r in records if r["pair"] == pair.name and r["method"] == method.name]
            by_budget = {}
            for budget in ((None,) if method.baseline else suite.budgets):
                done = [r for r in rows if r["budget"] == budget and r["status"] == "done"]
                if done:
                    accuracy = [r["test_accuracy"] for r in done]
                    by_budget["any" if budget is None else str(budget)] = {
                        "mean": statistics.fmean(accuracy),
                        "std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                        "n": len(accuracy), "queries": statistics.fmean(r["queries"] for r in done),
                        "seconds": statistics.fmean(r["wall_seconds"] for r in done)}
            table[pair.name][method.name] = by_budget
    skipped = {p.name: suite.missing(p) for p in suite.pairs if suite.missing(p)}
    return {"suite": suite.name, "description": suite.description, "budgets": list(suite.budgets),
            "seeds": list(suite.seeds), "methods": {m.name: {"label": m.label, "baseline": m.baseline,
                                                                "black_box": m.black_box} for m in suite.methods},
            "date": datetime.date.today().isoformat(), "machine": machine(), "command": command_line(),
            "cell_commands": cell_commands(out), "summary": table, "skipped": skipped, "cells": records}


def command_line() -> str:
    """The bbreprog command this process runs ('' when it is not the CLI)."""
    return " ".join(["bbreprog", *sys.argv[1:]]) if Path(sys.argv[0]).name == "bbreprog" else ""


def cell_commands(out: Path) -> list[str]:
    """The distinct commands that ran cells into ``out`` (commands.log), oldest first."""
    log = out / "commands.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return list(dict.fromkeys(line.split("  ", 1)[-1] for line in lines if line.strip()))


def machine() -> dict:
    import numpy
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for package in ("onnxruntime", "nevergrad"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            pass
    return {"host": platform.node(), "system": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(), "versions": versions}


def write_results(suite: Suite, results: dict, out: Path) -> None:
    atomic_write(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    atomic_write(out / "results.md", markdown(suite, results).encode())
    for pair in suite.pairs:
        if pair.name not in results["skipped"]:
            plot_pair(suite, results, pair.name, out / f"{pair.name}.png")


def markdown(suite: Suite, results: dict) -> str:
    """One table per pair: methods × budgets, test accuracy mean ± std (seeds), the best
    black-box method of each budget in bold; baselines shown at every budget that pays for them."""
    m = results["machine"]
    lines = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += [f"{results['date']}, {m['host']} ({m['system']}, {m['cpus']} CPUs), "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
              f"Command: `{results['command'] or 'bbreprog bench ' + str(suite.path)}`. "
              f"Seeds {', '.join(map(str, suite.seeds))}; test accuracy, mean ± std over seeds; budgeted queries "
              "(everything but the test pass) on the columns; `–`: the budget does not pay for it; "
              "in bold, the best black-box method of each budget.", ""]
    earlier = [c for c in results.get("cell_commands", []) if c != results["command"]]
    if earlier:
        lines += ["The cells were run by: " + "; ".join(f"`{c}`" for c in earlier) + ".", ""]
    if any(c["status"] == "not run" for c in results["cells"]):
        lines += ["`not run`: no command has run that cell yet (the same command without `--report` runs it).", ""]
    not_run = {(c["pair"], c["method"], c["budget"]) for c in results["cells"] if c["status"] == "not run"}
    for pair in suite.pairs:
        lines += [f"## {pair.name}", ""]
        if pair.name in results["skipped"]:
            lines += [f"Skipped: {results['skipped'][pair.name]}.", ""]
            continue
        table = results["summary"][pair.name]
        header = "| method | " + " | ".join(f"{b:,}" for b in suite.budgets) + " |"
        lines += [header, "|---|" + "---|" * len(suite.budgets)]
        best = {b: best_black_box(suite, table, b) for b in suite.budgets}
        for method in suite.methods:
            cells = []
            for b in suite.budgets:
                entry = table[method.name].get("any" if method.baseline else str(b))
                if entry is None and (pair.name, method.name, None if method.baseline else b) in not_run:
                    cells.append("not run")
                    continue
                if entry is None or (method.baseline and entry["queries"] > b):
                    cells.append("–")
                    continue
                text = accuracy_text(entry, len(suite.seeds))
                cells.append(f"**{text}**" if best[b] == method.name else text)
            cost = table[method.name].get("any")
            label = method.label + (f" ({cost['queries']:,.0f} q)" if method.baseline and cost else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [""] + against_bounds(suite, table, pair.name)
        lines += [f"![{pair.name}]({pair.name}.png)", ""]
    failures = [c for c in results["cells"] if c["status"] == "failed"]
    if failures:
        lines += ["## Failed cells", "", "Not in the tables; the same command runs them again.", ""]
        lines += [f"- `{c['id']}`: {c['reason']}" for c in failures] + [""]
    return "\n".join(lines)


def accuracy_text(entry: dict, seeds: int) -> str:
    """Mean ± std over the seeds, saying over how many when some failed or were not run."""
    text = f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return text + (f" ({entry['n']} of {seeds} seeds)" if entry["n"] < seeds else "")


def best_black_box(suite: Suite, table: dict, budget: int) -> str | None:
    """The black-box method with the highest mean test accuracy at ``budget`` (None: none ran)."""
    trained = [(v[str(budget)]["mean"], name) for name, v in table.items()
               if suite.method(name).black_box and str(budget) in v]
    return max(trained)[1] if trained else None


def white_box_bound(suite: Suite, pair: str, name: str) -> str | None:
    """The white-box method with the same transform and label map as method ``name``: what the
    same program and map reach with exact gradients, the reference for what queries alone reach
    (not always above it: exact steps can overfit a small training split)."""
    def shape(method: str):
        config = suite.config(Cell(pair, method, max(suite.budgets), suite.seeds[0]), Path())
        return config.transform, config.label_map
    wanted = shape(name)
    return next((m.name for m in suite.methods
                 if m.settings.get("train.method") == "whitebox" and shape(m.name) == wanted), None)


def against_bounds(suite: Suite, table: dict, pair: str) -> list[str]:
    """Per budget: the best black-box method against the best map fitted to the zero program
    that the budget pays for, and against the white-box bound of its own transform and map."""
    def shown(entry: dict | None) -> str:
        return "not run" if entry is None else accuracy_text(entry, len(suite.seeds))

    rows = []
    for b in suite.budgets:
        name = best_black_box(suite, table, b)
        if name is None:
            continue
        entry = table[name][str(b)]
        zero = [(v["any"]["mean"], m) for m, v in table.items()
                if suite.method(m).baseline == "zero" and "any" in v and v["any"]["queries"] <= b]
        head = max(zero)[1] if zero else None
        baseline = f"`{head}` {shown(table[head]['any'])}" if head else "–"
        bound_name = white_box_bound(suite, pair, name)
        bound = table[bound_name].get(str(b)) if bound_name else None
        ratio = f"{100 * entry['mean'] / bound['mean']:.0f} %" if bound and bound["mean"] > 0 else "–"
        rows.append(f"| {b:,} | `{name}` {shown(entry)} | {baseline} | "
                    + (f"`{bound_name}` {shown(bound)}" if bound_name else "none in the suite") + f" | {ratio} |")
    if not rows:
        return []
    return ["The best black-box method of each budget, against the best map fitted to the zero program "
            "and the white-box bound (the same transform and map trained with exact gradients):", "",
            "| budget | best black-box | best zero-program baseline | white-box bound | black-box ÷ white-box |",
            "|---|---|---|---|---|", *rows, ""]


def plot_pair(suite: Suite, results: dict, pair: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["summary"][pair]
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=120)
    lowest, highest = min(suite.budgets), max(suite.budgets)
    for index, method in enumerate(suite.methods):
        entries = table[method.name]
        colour = f"C{index % 10}"
        if method.baseline:
            entry = entries.get("any")
            if entry and entry["queries"] <= highest:
                start = max(entry["queries"], lowest / 2)
                ax.hlines(entry["mean"], start, highest * 1.5, colors=colour, linestyles="--",
                          label=f"{method.label} ({entry['mean']:.3f})")
            continue
        points = sorted((e["queries"], e["mean"], e["std"]) for e in entries.values())
        if not points:
            continue
        x, mean, std = (list(v) for v in zip(*points))
        ax.plot(x, mean, marker="o", markersize=3, color=colour, label=method.label)
        ax.fill_between(x, [a - s for a, s in zip(mean, std)], [a + s for a, s in zip(mean, std)],
                        color=colour, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("budgeted queries spent")
    ax.set_ylabel(f"test accuracy (mean ± std, {len(suite.seeds)} seeds)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{suite.name}: {pair}")
    ax.grid(alpha=0.3)
    # below the axes: inside, a dozen long labels hide the points they name
    labels = len(ax.get_legend_handles_labels()[1])
    fig.set_size_inches(7.0, 3.6 + 0.16 * labels)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=7, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def headline(results: dict) -> str:
    """One line per pair for the terminal: the best black-box method at the largest budget
    against the best baseline."""
    lines = []
    for pair, table in results["summary"].items():
        if pair in results["skipped"]:
            lines.append(f"{pair}: skipped ({results['skipped'][pair]})")
            continue
        largest = str(max(results["budgets"]))
        trained = [(v[largest]["mean"], name) for name, v in table.items()
                   if results["methods"][name]["black_box"] and largest in v]
        base = [(v["any"]["mean"], name) for name, v in table.items() if results["methods"][name]["baseline"] and "any" in v]
        parts = []
        if trained:
            parts.append(f"best black-box at {int(largest):,} queries: {max(trained)[1]} {max(trained)[0]:.3f}")
        if base:
            parts.append(f"best baseline: {max(base)[1]} {max(base)[0]:.3f}")
        lines.append(f"{pair}: " + "; ".join(parts) if parts else f"{pair}: no black-box or baseline cell finished")
    return "\n".join(lines)

