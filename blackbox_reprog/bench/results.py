"""A suite's results: summarised over seeds, written as results.json, results.md and a plot per pair."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from ..files import atomic_write
from .suite import Cell, Suite


# ---- results ----------------------------------------------------------------------------------
def summarise(suite: Suite, records: list[dict], out: Path) -> dict:
    """Per pair, method and column (``Cell.key``: the budget, and the shots and answers of a
    suite with those axes): test accuracy mean ± std over seeds and queries spent."""
    done: dict = {}
    for record in records:
        if record["status"] == "done":
            done.setdefault((record["pair"], record["method"], Cell.of(record).key), []).append(record)
    table: dict = {pair.name: {method.name: {} for method in suite.methods} for pair in suite.pairs}
    for cell in suite.cells():
        rows = done.get((cell.pair, cell.method, cell.key))
        if rows and cell.key not in table[cell.pair][cell.method]:
            accuracy = [r["test_accuracy"] for r in rows]
            table[cell.pair][cell.method][cell.key] = {
                "mean": statistics.fmean(accuracy), "std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "n": len(accuracy), "queries": statistics.fmean(r["queries"] for r in rows),
                "seconds": statistics.fmean(r["wall_seconds"] for r in rows)}
    skipped = {p.name: suite.missing(p) for p in suite.pairs if suite.missing(p)}
    axes = {}
    if suite.axes:                                 # and the best black-box minus the best baseline per column
        from .grid import margins
        axes = {"shots": list(suite.shots), "answers": list(suite.answers), "margins": margins(suite, table)}
    return {"suite": suite.name, "description": suite.description, "budgets": list(suite.budgets),
            "seeds": list(suite.seeds), **axes,
            "methods": {m.name: {"label": m.label, "baseline": m.baseline, "black_box": m.black_box}
                        for m in suite.methods},
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
    from .grid import plot_grid
    for pair in suite.pairs:
        if pair.name not in results["skipped"]:
            (plot_grid if suite.axes else plot_pair)(suite, results, pair.name, out / f"{pair.name}.png")


def markdown(suite: Suite, results: dict) -> str:
    """One table per pair: methods × budgets, test accuracy mean ± std (seeds), the best
    black-box method of each budget in bold; baselines shown at every budget that pays for them.
    A suite with shots and answers axes gets methods × (shots × answers) tables instead (grid.py)."""
    m = results["machine"]
    lines = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += [f"{results['date']}, {m['host']} ({m['system']}, {m['cpus']} CPUs), "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
              f"Command: `{results['command'] or 'bbreprog bench ' + str(suite.path)}`. "
              f"Seeds {', '.join(map(str, suite.seeds))}; test accuracy, mean ± std over seeds; "
              + ("budgeted queries (everything but the test pass) on the columns; `–`: the budget does not pay "
                 "for it; in bold, the best black-box method of each budget." if not suite.axes else
                 "budgeted queries: everything but the test pass."), ""]
    earlier = [c for c in results.get("cell_commands", []) if c != results["command"]]
    if earlier:
        lines += ["The cells were run by: " + "; ".join(f"`{c}`" for c in earlier) + ".", ""]
    if any(c["status"] == "not run" for c in results["cells"]):
        lines += ["`not run`: no command has run that cell yet (the same command without `--report` runs it).", ""]
    if suite.axes:
        from .grid import grid_sections                # grid.py reads this module's helpers
        return "\n".join(lines + grid_sections(suite, results))
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
    against the best baseline (with shots and answers axes: where reprogramming beat them)."""
    if "shots" in results:
        from .grid import grid_headline
        return grid_headline(results)
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

