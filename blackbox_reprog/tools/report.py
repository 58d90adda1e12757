"""``bbreprog report``: one markdown page describing what a run did, read from its folder.

Everything comes from the files a run folder already holds (``config.toml``, ``result.json``,
``metrics.jsonl``, ``program.pt``): no backend is built and no query is spent. The program is
drawn by building the transform alone, from the config and the model input that
``result.json`` recorded. A folder without ``result.json`` (a run still going, or killed) gets
a partial report from ``config.toml`` and ``metrics.jsonl``, marked unfinished.

``read_run`` reads the folder, ``render_report`` turns it into markdown text and PNG bytes,
``write_report`` writes them: the page (default ``RUN_DIR/report.md``) and the figures it
links, ``report-curves.png`` and ``report-program.png``, into the run folder.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

from ..run.config import ConfigError, RunConfig, load_run_config
from ..errors import Refusal
from ..backends.ledger import UNBUDGETED
from ..run.program import Program
from .figures import draw_curves, draw_image_program, draw_signal_program

CURVES = "report-curves.png"
PROGRAM = "report-program.png"


@dataclass
class RunFolder:
    """What a run folder holds, read once."""
    path: Path
    config: RunConfig
    config_text: str
    metrics: list[dict]                     # metrics.jsonl, one row per step
    result: dict | None = None              # result.json; None while the run is unfinished
    program: Program | None = None          # program.pt, rebuilt (no backend, no data)
    compared_metrics: list[dict] = field(default_factory=list)   # the train.compare_with run's rows

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclass
class Report:
    markdown: str
    figures: dict[str, bytes]               # file name in the run folder → PNG bytes


# ---- reading the folder ------------------------------------------------------------------------

def read_run(run_dir: str | Path) -> RunFolder:
    """The run folder's files; a folder that is not a run is refused with one sentence."""
    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise Refusal(f"expected a run folder holding config.toml, got {path}")
    if not (path / "result.json").is_file() and not (path / "metrics.jsonl").is_file():
        raise Refusal(f"expected a run folder with result.json or metrics.jsonl, got {path}")
    try:
        config = load_run_config(path)
    except ConfigError as error:
        raise Refusal(f"expected a valid config.toml in {path}, got one that is refused: {error}") from None
    run = RunFolder(path, config, (path / "config.toml").read_text(), read_metrics(path / "metrics.jsonl"))
    if (path / "result.json").is_file():
        try:
            run.result = json.loads((path / "result.json").read_text())
        except json.JSONDecodeError as error:
            raise Refusal(f"expected a readable result.json in {path}, got one that fails to parse "
                          f"({error.msg}, line {error.lineno})") from None
    if (path / "program.pt").is_file():
        run.program = Program.load(path)
    comparison = (run.result or {}).get("comparison")
    if comparison:
        run.compared_metrics = read_metrics(path / comparison["run_dir"] / "metrics.jsonl")
    return run


def read_metrics(path: Path) -> list[dict]:
    """One row per step. A torn last line (the process died mid-write) is left out; a damaged
    line elsewhere is refused."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise Refusal(f"expected one JSON object per line in {path}, got a damaged line {number}") from None
    return rows


# ---- the page ----------------------------------------------------------------------------------

def render_report(run: RunFolder, link: Callable[[str], str] = lambda name: name) -> Report:
    """Markdown text and the figures it links; ``link`` turns a figure's file name into the
    path the page uses (the page may live outside the run folder)."""
    figures: dict[str, bytes] = {}
    parts = [f"# Run report: {run.path.name}", ""]
    if not run.finished:
        parts += [f"**Unfinished run:** {run.path} has no result.json yet (still running, or stopped; "
                  f"`bbreprog resume {run.path}` continues it), so this page shows only its config and "
                  "the steps in metrics.jsonl.", ""]
    parts += run_section(run) + config_section(run)
    if run.finished:
        parts += queries_section(run.result)
    curves = draw_curves(run)
    parts += ["## Curves", ""]
    if curves is None:
        parts += ["No step was recorded in metrics.jsonl.", ""]
    else:
        figures[CURVES] = curves
        parts += [f"![accuracy and loss against queries spent]({link(CURVES)})", ""]
    if run.finished:
        parts += accuracy_section(run.result)
        parts += per_class_section(run.result, run.program.classes if run.program else None)
    if run.program is None:
        parts += ["## The program", "", "No program.pt: the chosen program is written when the run finishes.", ""]
    else:
        text, picture = program_section(run)
        parts += text
        if picture is not None:
            figures[PROGRAM] = picture
            parts += [f"![the learned program]({link(PROGRAM)})", ""]
        parts += label_map_section(run)
    return Report("\n".join(parts).rstrip() + "\n", figures)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write the page (default RUN_DIR/report.md) and its figures (into RUN_DIR); returns
    (page, figures). Nothing else in the folder is touched."""
    from ..files import atomic_write
    run = read_run(run_dir)
    page = Path(output) if output else run.path / "report.md"
    report = render_report(run, lambda name: Path(os.path.relpath(run.path / name, page.parent)).as_posix())
    figures = []
    for name, png in report.figures.items():
        atomic_write(run.path / name, png)
        figures.append(run.path / name)
    atomic_write(page, report.markdown.encode())
    return page, figures


def run_section(run: RunFolder) -> list[str]:
    c, r = run.config, run.result or {}
    rows = []
    if run.finished:
        rows.append(("finished", f"{file_time(run.path / 'result.json')} (when result.json was written)"))
    elif run.metrics:
        rows.append(("last step written", file_time(run.path / "metrics.jsonl")))
    rows += [("model", model_line(c, r.get("backend"))),
             ("target data", data_line(c, r.get("data"))),
             ("method", method_line(c, r.get("search"))),
             ("program", program_line(c, r.get("program"))),
             ("label map", label_map_line(c)),
             ("loss", component_line(c.loss)),
             ("seed", str(c.seed)),
             ("budget", f"{c.budget:,} queries (everything but the final test pass)")]
    if run.finished:
        rows += [("steps", f"{r['steps']:,}; stopped: {r['stopped']}"),
                 ("wall time", f"{r['wall_seconds']:,.1f} s")]
    else:
        last = run.metrics[-1] if run.metrics else {"step": 0, "queries": 0}
        rows.append(("steps so far", f"{last['step']:,} ({last['queries']:,} budgeted queries spent)"))
    return ["## The run", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def file_time(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def model_line(c: RunConfig, backend: dict | None) -> str:
    if backend is None:                      # unfinished: only what the config asked for
        return f"{c.backend.name}: {c.backend.model}"
    text = f"{backend['backend']}: {c.backend.model} (`{backend['model_id']}`)"
    if "degraded" in backend:
        d = backend["degraded"]
        text += f", degraded from {d['from']} to {d['to']} (inner model `{d['inner_model_id']}`)"
    low, high = backend["value_range"]
    return (text + f", answering {backend['output_kind']} over {backend['num_classes']:,} classes, "
            f"input {tuple(backend['input_shape'])} in [{low:g}, {high:g}]")


def data_line(c: RunConfig, data: dict | None) -> str:
    if data is None:
        return c.data.name
    return (f"{data['name']}: {data['classes']} classes; {data['train']:,} train, "
            f"{data['validation']:,} validation, {data['test']:,} test examples")


def component_line(section) -> str:
    """'kind (name value, …)': a component with every parameter it was built with."""
    shown = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in section.params)
    return f"{section.kind} ({shown})" if shown else section.kind


def method_line(c: RunConfig, search: dict | None) -> str:
    method, rule = c.train.method, component_line(c.optimizer)
    if method == "blackbox":
        text = f"blackbox: zeroth-order estimator {component_line(c.estimator)}, step rule {rule}"
    elif method == "whitebox":
        text = f"whitebox: autograd through the model, step rule {rule}"
    else:
        ev = c.evolution
        text = f"evolution: nevergrad {ev.optimizer} (population {ev.popsize}, sigma {ev.sigma:g})"
    if search:
        programs = "program" if search["population"] == 1 else "programs"
        text += f"; {search['population']} {programs} × batch {c.train.batch_size} per step"
    if c.train.compare_with:
        text += f"; compared with {c.train.compare_with}"
    return text


def program_line(c: RunConfig, program: dict | None) -> str:
    text = component_line(c.transform)
    if program:
        full = f" of {program['full_params']:,}" if "full_params" in program else ""
        text += f"; {program['num_params']:,} trained parameters{full}"
    return text


def label_map_line(c: RunConfig) -> str:
    return component_line(c.label_map)


def config_section(run: RunFolder) -> list[str]:
    return ["<details><summary>config.toml (the fully resolved configuration)</summary>", "",
            "```toml", run.config_text.rstrip(), "```", "", "</details>", ""]


def queries_section(result: dict) -> list[str]:
    """The ledger per purpose: one row each, then the total and the budget."""
    ledger = result["ledger"]
    lines = ["## Queries", "",
             "| purpose | queries | counts against the budget | read back from the answer store | retried | calls "
             "| seconds |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for purpose, tally in ledger.items():
        if purpose == "total" or not isinstance(tally, dict):
            continue
        if purpose == "probe" and not tally["queries"] and not tally["calls"]:
            continue                          # only remote backends probe
        in_budget = "no" if purpose in UNBUDGETED else "yes"
        lines.append(f"| {purpose} | {tally['queries']:,} | {in_budget} | {tally['stored']:,} | "
                     f"{tally['retried']:,} | {tally['calls']:,} | {tally['seconds']:,.1f} |")
    t = ledger["total"]
    lines += [f"| total | {t['queries']:,} | {ledger['budgeted']:,} budgeted | {t['stored']:,} | {t['retried']:,} | "
              f"{t['calls']:,} | {t['seconds']:,.1f} |", "",
              f"{result['budgeted_queries']:,} of the {result['budget']:,}-query budget spent (retries "
              "included); the final test pass is outside the budget.", ""]
    journal = result.get("journal")
    if journal:
        resent, earlier = journal["resent_after_interruption"], journal["earlier_attempts_booked"]
        honoured = "honours" if earlier["endpoint_honours_idempotency"] else "does not declare that it honours"
        lines += [f"Journal ({journal['file']}, {journal['records']:,} records): "
                  f"{journal['answers_from_store']:,} answers read back from the answer store instead of bought; "
                  f"{resent['calls']:,} calls ({resent['queries']:,} queries) sent again after an interruption; "
                  f"{journal['failed_calls']:,} failed calls; {earlier['calls']:,} calls ({earlier['queries']:,} "
                  f"queries) of earlier processes booked as retried (the endpoint {honoured} idempotency keys).", ""]
    return lines


def accuracy_section(result: dict) -> list[str]:
    r = result
    lines = ["## Accuracy", "", "| | accuracy |", "|---|---:|",
             f"| zero program, test (label map as first fitted) | {r['start_accuracy']:.3f} |",
             f"| trained program, test | {r['test_accuracy']:.3f} |",
             f"| best validation (step {r['best_step']}, loss {r['best_validation_loss']:.3f}) | "
             f"{r['best_validation_accuracy']:.3f} |",
             f"| majority class, test | {r['chance_accuracy']:.3f} |",
             f"| uniform chance | {r['uniform_chance']:.3f} |", ""]
    change = r["test_accuracy"] - r["start_accuracy"]
    if r["best_step"] == 0:
        verdict = "No trained program beat the zero program on validation loss, so the zero program was kept"
    elif round(change, 3) == 0:
        verdict = "The trained program matches the zero program's test accuracy"
    else:
        verdict = f"The trained program {'gains' if change > 0 else 'loses'} {abs(change):.3f} test accuracy over the zero program"
    lines += [verdict + "; the program is chosen on validation loss, never on the test set.", ""]
    c = r.get("comparison")
    if c:
        lines += [f"Compared run: {c['method']} with the same config, seed and at most {r['steps']} steps "
                  f"(folder {c['run_dir']}/):", "",
                  "| | this run | compared run |", "|---|---:|---:|",
                  f"| method | {r['method']} | {c['method']} |",
                  f"| zero program, test | {r['start_accuracy']:.3f} | {c['start_accuracy']:.3f} |",
                  f"| trained program, test | {r['test_accuracy']:.3f} | {c['test_accuracy']:.3f} |",
                  f"| best validation | {r['best_validation_accuracy']:.3f} | {c['best_validation_accuracy']:.3f} |",
                  f"| steps | {r['steps']:,} | {c['steps']:,} |",
                  f"| train queries | {r['queries']['train']:,} | {c['queries']['train']:,} |",
                  f"| wall time (s) | {r['wall_seconds']:,.1f} | {c['wall_seconds']:,.1f} |", ""]
    return lines


#: up to this many classes, the whole confusion matrix is a table; beyond, its largest mistakes
MATRIX_CLASSES = 10
#: up to this many classes, every class's accuracy is listed; beyond, the least accurate
LISTED_CLASSES = 20
SHOWN_MISTAKES = 10


def per_class_section(result: dict, program_classes: list[str] | None) -> list[str]:
    """The chosen program's test answers by class: each class's accuracy and the confusion
    matrix (row: true class, column: predicted), from result.json's ``test_confusion`` (counts)
    and ``test_per_class_accuracy``. With many classes the matrix becomes its largest
    off-diagonal cells, and the per-class table the least accurate classes."""
    lines = ["## Per class (test)", ""]
    confusion = result.get("test_confusion")
    if confusion is None:
        return lines + ["result.json has no test_confusion: this run was written before per-class test counts "
                        "were recorded, so its per-class accuracy and confusion matrix are unknown "
                        "(train again to get them).", ""]
    k = len(confusion)
    classes = [str(c) for c in (result.get("classes") or program_classes or range(k))]
    if len(classes) != k or any(len(row) != k for row in confusion):
        return lines + [f"result.json's test_confusion is not a {len(classes)} × {len(classes)} table of counts "
                        "(one row and one column per class), so it is not shown.", ""]
    totals = [sum(row) for row in confusion]
    accuracy = result.get("test_per_class_accuracy") or [row[i] / n if n else None
                                                         for i, (row, n) in enumerate(zip(confusion, totals))]
    if len(accuracy) != k:
        return lines + [f"result.json's test_per_class_accuracy holds {len(accuracy)} values for {k} classes, so "
                        "the per-class results are not shown.", ""]
    accuracy = [a if isinstance(a, (int, float)) and math.isfinite(a) else None for a in accuracy]  # no examples
    names = [cell(name) for name in classes]
    order = list(range(k))
    if k > LISTED_CLASSES:                  # the least accurate first; classes without examples last
        order = sorted(order, key=lambda i: (accuracy[i] is None, accuracy[i] or 0.0))[:LISTED_CLASSES]
        lines += [f"The {LISTED_CLASSES} least accurate of {k} classes (result.json lists them all):", ""]
    lines += ["| true class | test examples | predicted right | accuracy | most often mistaken for |",
              "|---|---:|---:|---:|---|"]
    for i in order:
        wrong = [(count, -j) for j, count in enumerate(confusion[i]) if j != i and count]
        count, j = max(wrong, default=(0, 0))              # ties: the first class
        mistaken = f"{names[-j]} ({count:,})" if count else "—"
        shown = "—" if accuracy[i] is None else f"{accuracy[i]:.3f}"
        lines.append(f"| {names[i]} | {totals[i]:,} | {confusion[i][i]:,} | {shown} | {mistaken} |")
    lines.append("")
    if k <= MATRIX_CLASSES:
        lines += ["Confusion matrix: one row per true class, one column per predicted class, counts of test "
                  "examples; the diagonal is right.", "",
                  "| true ↓ predicted → | " + " | ".join(names) + " |", "|---|" + "---:|" * k]
        lines += [f"| {names[i]} | " + " | ".join(f"**{n:,}**" if i == j else f"{n:,}" for j, n in enumerate(row))
                  + " |" for i, row in enumerate(confusion)]
        return lines + [""]
    mistakes = sorted(((-n, i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n)
                      )[:SHOWN_MISTAKES]
    if not mistakes:
        return lines + [f"Every test example was predicted right ({k} × {k} confusion matrix in result.json).", ""]
    lines += [f"The confusion matrix has {k} × {k} cells (result.json's test_confusion); its "
              f"{len(mistakes)} largest mistakes:", "", "| true class | predicted as | test examples |", "|---|---|---:|"]
    lines += [f"| {names[i]} | {names[j]} | {-n:,} |" for n, i, j in mistakes]
    return lines + [""]


def cell(text: str) -> str:
    """Text as one markdown table cell: a pipe would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


# ---- the program -------------------------------------------------------------------------------

def program_section(run: RunFolder) -> tuple[list[str], bytes | None]:
    """Text, and the program drawn on the first test example (on a blank one when the run's
    dataset is gone: the program rebuilds from program.pt alone)."""
    program, c = run.program, run.config
    transform, theta = program.transform, program.theta.float()          # (d,)
    lines = ["## The program", ""]
    try:
        splits = c.data.splits(c.seed)
        example = torch.as_tensor(splits.test.x[:1])                      # (1, *target_shape)
        shown = f"the example is the first test example (class {splits.test.classes[int(splits.test.y[0])]})"
    except ValueError as error:              # the dataset moved or changed since the run
        example = torch.zeros(1, *transform.target_shape)
        shown = f"the example is blank: the run's dataset cannot be read now ({error})"
    with torch.no_grad():
        blank = transform(theta[None], torch.zeros_like(example))[0, 0]  # (*source_shape)
        programmed = transform(theta[None], example)[0, 0]              # (*source_shape)
    lines.append(f"θ has {transform.num_params:,} parameters (L2 norm {float(theta.norm()):.3g}; 0 is the zero "
                 f"program). Drawn with the transform alone, rebuilt from program.pt; {shown}.")
    lines.append("")
    if len(transform.source_shape) == 1:
        picture = draw_signal_program(transform, example[0], blank, programmed)
    else:
        picture = draw_image_program(transform, example[0], blank, programmed)
    return lines, picture


# ---- the label map -----------------------------------------------------------------------------
def label_map_section(run: RunFolder) -> list[str]:
    """Which source classes speak for each target class: the fitted map explains itself."""
    return ["## The label map", "", *run.program.label_map.explain(run.program.classes), ""]
