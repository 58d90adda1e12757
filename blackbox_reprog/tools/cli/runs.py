"""Training: demo, train, resume, evaluate."""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from ...errors import Refusal
from ...run.config import ConfigError, RunConfig, load_config, load_run_config
from .common import close, common_options, fail, main, with_method


DEMO = {
    "budget": 200_000,
    "backend": {"name": "onnx", "model": "crepe-tiny"},
    "data": {"name": "ItalyPowerDemand", "validation_fraction": 0.25},
    "transform": {"kind": "signal", "grid": 64},
    "label_map": {"kind": "iterative", "per_class": 10},
    "loss": {"kind": "ce"},
    "estimator": {"kind": "random", "directions": 20, "smoothing": 0.01},
    "optimizer": {"kind": "adam", "lr": 0.3, "schedule": "cosine"},
    "train": {"batch_size": 64, "eval_every": 5},
}


def _train(config: RunConfig, quiet: bool, run_dir: Path | None = None) -> None:
    """Train ``config``; with ``run_dir``, resume the interrupted run in that folder."""
    from tqdm import tqdm

    from ...backends.base import BackendUnavailable
    from ...run.runner import Run
    bar = None
    shown_name = Path(config.data.name).name        # the dataset's name, not the folder it is in

    def progress(row: dict) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:                      # drawn at the first step, so a refusal found while
            bar = tqdm(total=total, unit=unit, unit_scale=True, dynamic_ncols=True,   # starting
                       desc=shown_name, file=sys.stderr)                               # stays one line
        bar.update(row[counted] - bar.n)
        postfix = {"step": row["step"], "loss": f"{row['loss']:.3f}"}
        if row.get("val_accuracy") is not None:
            postfix["val"] = f"{row['val_accuracy']:.3f}"
        bar.set_postfix(postfix, refresh=False)

    try:
        job = Run(config, progress=progress)
    except Refusal as error:            # refused while building: nothing was spent, nothing drawn
        fail(str(error))
    if job.components.trainer.bound_by_steps():      # the budget does not bind: count steps
        counted, total, unit = "step", config.train.max_steps, " steps"
    else:
        counted, total, unit = "queries", config.budget, "q"
    try:
        run_dir, summary = job.execute(run_dir, resume=run_dir is not None)
    except Refusal as error:                 # found wanting once running (a journal that does not hold up,
        close(bar)                          # an endpoint that breaks its contract on every attempt)
        fail(str(error))
    except BackendUnavailable as error:      # the model stopped answering: come back later
        close(bar)
        fail(f"the model is unavailable: {error}; continue later with `bbreprog resume {job.run_dir}`",
              code=3)
    except Exception as error:               # failed while running: the traceback is for a bug report
        close(bar)
        traceback.print_exc()
        fail(f"the run stopped: {type(error).__name__}: {error}", code=1)
    close(bar)
    q = summary["queries"]
    probe = f"probe {q['probe']:,} + " if q["probe"] else ""
    retried = f", and {summary['retried_queries']:,} sent again after failures" if summary["retried_queries"] else ""
    retried += _read_back(summary["billing"])
    click.echo(
        f"\n{shown_name}: test accuracy {summary['test_accuracy']:.3f} "
        f"(zero program {summary['start_accuracy']:.3f}, majority class {summary['chance_accuracy']:.3f})\n"
        f"queries: {q['total']:,} = {probe}train {q['train']:,} + label-map {q['label-map']:,} + "
        f"validate {q['validate']:,} + test {q['test']:,}{retried}; budget {summary['budget']:,}\n"
        f"steps {summary['steps']}, chosen on validation (loss {summary['best_validation_loss']:.3f}, accuracy "
        f"{summary['best_validation_accuracy']:.3f}) at step "
        f"{summary['best_step']}, {summary['wall_seconds']:.0f} s\n"
        f"run folder: {run_dir}  (result.json, metrics.jsonl, accuracy.png)")
    _echo_comparison(summary, run_dir)


def _read_back(bill: dict) -> str:
    """What the answer store answered: bought by interrupted processes of this run (billed
    to it then) apart from what was never bought again."""
    earlier, free = bill["bought_by_earlier_processes"], bill["read_back_not_bought"]
    if not earlier:
        return f"; {free:,} of them read back from the answer store, not bought" if free else ""
    return (f"; {earlier + free:,} of them read back from the answer store: {earlier:,} bought by the interrupted "
            f"processes, {free:,} not bought; {bill['possibly_billed']:,} possibly billed in all")


def _echo_comparison(summary: dict, run_dir: Path) -> None:
    if "comparison" in summary:
        c = summary["comparison"]
        click.echo(f"{c['method']} with the same seed and {c['steps']} steps: test accuracy "
                   f"{c['test_accuracy']:.3f} ({c['queries']['train']:,} train queries) in {run_dir / c['run_dir']}")


def _read_result(folder: Path) -> dict:
    try:
        return json.loads((folder / "result.json").read_text())
    except (OSError, ValueError) as error:
        fail(f"expected a readable result.json in {folder}, got one that fails to parse ({type(error).__name__})")


@main.command()
@common_options
def demo(budget, seed, method, out, overrides, quiet):
    """Reprogram the embedded pitch model CREPE-tiny (ONNX, black-box) to classify
    ItalyPowerDemand time series. About two minutes on two CPU cores."""
    try:
        config = load_config(base=DEMO, overrides=with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        fail(str(error))
    _train(config, quiet)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@common_options
def train(config_file, budget, seed, method, out, overrides, quiet):
    """Train a program and a label map from a TOML config."""
    try:
        config = load_config(config_file, overrides=with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        fail(str(error))
    _train(config, quiet)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def resume(run_dir, quiet):
    """Continue an interrupted run: it is replayed from the start with its seed, every answer
    already paid for read back from its journal's answer store, and goes on where it stopped."""
    folder = Path(run_dir)
    if not (folder / "config.toml").is_file():
        fail(f"expected a run folder holding config.toml, got {folder}")
    try:
        config = load_run_config(folder)
    except ConfigError as error:
        fail(str(error))
    if (folder / "result.json").is_file():
        summary = _read_result(folder)
        if "comparison_pending" not in summary:
            fail(f"expected an interrupted run to resume, got {folder}, which finished (its result.json is "
                  "written); train again to start over")
        from ...run.runner import finish_comparison      # the run finished; the comparison it asked for did not
        try:
            summary = finish_comparison(config, folder, summary)
        except Refusal as error:
            fail(str(error))
        _echo_comparison(summary, folder)
        return
    from ...run.journal import JOURNAL
    journaled = (folder / JOURNAL).is_file()
    _train(config, quiet, run_dir=folder)
    if not journaled:                        # said after the run, so that a refusal stays one line
        click.echo(f"note: {folder} had no {JOURNAL} (train.journal was off): the run started over and bought "
                   "every answer again", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_name", help="Evaluate on another dataset (its test split).")
def evaluate(run_dir, data_name):
    """Test accuracy of a finished run's program (queries counted under 'test')."""
    from ...run.program import load_program
    try:
        program = load_program(run_dir)
        report = program.evaluate(data_name)
    except Refusal as error:
        fail(str(error))
    click.echo(json.dumps(report, indent=2))
