"""Running cells: one in a worker process, and a whole suite in a pool, in this process or on Ray;
each finished cell writes its cell.json, and a half-finished suite resumes.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..data.splits import TooFewShots
from ..run.config import RunConfig, to_toml, with_absolute_paths
from ..files import atomic_write
from ..run.journal import JOURNAL
from ..run.trainer import BudgetTooSmall
from .results import command_line, summarise, write_results
from .suite import EXECUTORS, Cell, Suite, SuiteError, load_suite


# ---- running one cell (in a worker process) --------------------------------------------------
def cell_digest(config: RunConfig, baseline: str) -> str:
    """What makes a cell's result: its whole config but the folder it is written to, and what
    is done with it (a baseline or a trained program)."""
    text = f"baseline = {baseline!r}\n" + to_toml(dataclasses.replace(config, out="", name=""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_cell(suite_path: str, cell: Cell, out: str, report: Callable[[str, dict], None] | None = None) -> dict:
    """Run one cell into ``out/cells/<id>`` and return its record (also written as cell.json)."""
    suite = load_suite(suite_path, check=False)              # the command that runs the suite checked it
    folder = Path(out) / "cells" / cell.id
    config = suite.config(cell, folder)
    method = suite.method(cell.method)
    record = {**cell.record(), "id": cell.id, "config_digest": cell_digest(config, method.baseline)}
    # a trained cell cut short by an earlier run of the suite resumes from its journal (what it
    # paid for is read back); anything else cut short starts again
    resume = (not method.baseline and (folder / JOURNAL).is_file() and (folder / "config.toml").is_file()
              and (folder / "config.toml").read_text() == to_toml(with_absolute_paths(config)))
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _run(config, cell, method.baseline, folder, record, resume, report)
    except (BudgetTooSmall, TooFewShots) as error:   # one step costs more than the budget; a class lacks shots
        # as final as a result for this config: kept (cell.json alone), so a report shows why, not "not run"
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
        record.update(status="skipped", reason=str(error))
        write_cell_record(folder, record)
        return record


def _run(config: RunConfig, cell: Cell, baseline: str, folder: Path, record: dict, resume: bool,
         report: Callable[[str, dict], None] | None) -> dict:
    started = time.perf_counter()
    if baseline == "scratch":
        from .scratch import train_from_scratch
        splits = config.data.splits(config.seed)
        outcome = train_from_scratch(splits, seed=config.seed)
        record.update(test_accuracy=outcome["test_accuracy"], queries=0, test_queries=0, steps=outcome["epochs"],
                      detail=outcome)
    elif baseline == "zero":
        from ..run.runner import build
        components = build(config)
        try:
            outcome = components.trainer.zero_program()
        finally:
            components.backend.close()
        record.update(test_accuracy=outcome["test_accuracy"], queries=outcome["ledger"]["budgeted"],
                      test_queries=outcome["ledger"]["test"]["queries"], steps=0)
        if hasattr(components.trainer.label_map, "penalty"):      # a linear head: the L2 penalty it used
            record["detail"] = {"l2": components.trainer.label_map.penalty}
    else:
        from ..run.runner import Run

        def progress(row: dict) -> None:
            if report:
                report(cell.id, {"queries": row["queries"], "budget": config.budget, "step": row["step"]})

        _, summary = Run(config, progress=progress).execute(folder, resume=resume, plot=False)
        record.update(test_accuracy=summary["test_accuracy"], start_accuracy=summary["start_accuracy"],
                      queries=summary["budgeted_queries"], test_queries=summary["queries"]["test"],
                      steps=summary["steps"], stopped=summary["stopped"])
    record.update(status="done", wall_seconds=round(time.perf_counter() - started, 2))
    write_cell_record(folder, record)
    return record


def write_cell_record(folder: Path, record: dict) -> None:
    atomic_write(folder / "cell.json", (json.dumps(record, indent=1) + "\n").encode())


def finished_record(suite: Suite, cell: Cell, out: Path) -> dict | None:
    """The cell's record from an earlier run of the suite, if it finished (or was skipped: its
    budget cannot pay for one step, a class lacks the shots) with the same config."""
    path = out / "cells" / cell.id / "cell.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    config = suite.config(cell, out / "cells" / cell.id)
    digest = cell_digest(config, suite.method(cell.method).baseline)
    return record if record.get("status") in ("done", "skipped") and record.get("config_digest") == digest else None


def restore_recorded_cells(out: Path) -> int:
    """Write back the ``cell.json`` of every finished (or skipped) cell that ``out/results.json``
    lists and whose folder is absent (a fresh clone: ``cells/`` is not committed); return how
    many. Their config digests are checked later, as for any finished cell."""
    try:
        cells = json.loads((out / "results.json").read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return 0
    root = (out / "cells").resolve()
    restored = 0
    for record in cells:
        if not (isinstance(record, dict) and isinstance(record.get("id"), str) and (
                record.get("status") == "done" or record.get("status") == "skipped" and "config_digest" in record)):
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
        reason = suite.missing(suite.pair(cell.pair)) or suite.inapplicable(cell)
        if reason:
            records[cell.id] = {**cell.record(), "id": cell.id, "status": "skipped", "reason": reason}
            event("skipped", cell.id, records[cell.id])
        elif record is not None:
            records[cell.id] = record
            event("resumed", cell.id, record)
        elif report_only:
            records[cell.id] = {**cell.record(), "id": cell.id, "status": "not run"}
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
    return {**cell.record(), "id": cell.id, "status": "failed",
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


