"""The ``bbreprog`` command line.

Exit codes: 0 success; 1 the run failed while running; 2 bad input (config, data, backend,
budget, usage) — refused before any query was spent.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import ConfigError, RunConfig, load_config

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


def _refusals() -> tuple[type[BaseException], ...]:
    """Errors that mean 'bad input, nothing spent': one sentence, exit code 2."""
    from .backend import InputError
    from .data import DataError
    from .registry import UnknownBackend
    from .trainer import BudgetTooSmall
    return (ConfigError, DataError, InputError, UnknownBackend, BudgetTooSmall, ValueError,
            FileNotFoundError)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _with_method(overrides: tuple[str, ...], method: str | None) -> tuple[str, ...]:
    return overrides + ((f"train.method={method}",) if method else ())


def common_options(command):
    for option in reversed([
        click.option("--budget", type=int, help="Queries to spend (all but the final test pass)."),
        click.option("--seed", type=int, help="Random seed; same seed, same result."),
        click.option("--method", type=click.Choice(["blackbox", "whitebox", "evolution"]),
                     help="blackbox: zeroth-order estimates; whitebox: autograd through the torch "
                          "plugin (reference); evolution: nevergrad."),
        click.option("--out", type=click.Path(file_okay=False), help="Folder for run folders [runs]."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key, e.g. --set estimator.directions=20."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        command = option(command)
    return command


@click.group()
@click.version_option(package_name="blackbox-reprog")
def main():
    """Reprogram models you can only query: learn an input program and a label map with
    zeroth-order gradient estimates, counting every query."""


def _train(config: RunConfig, quiet: bool) -> None:
    from tqdm import tqdm

    from .runner import Run
    bar = None if quiet else tqdm(total=config.budget, unit="q", unit_scale=True, dynamic_ncols=True,
                                  desc=f"{config.data.name}", file=sys.stderr)

    def progress(row: dict) -> None:
        if bar is None:
            return
        bar.update(row["queries"] - bar.n)
        postfix = {"step": row["step"], "loss": f"{row['loss']:.3f}"}
        if row.get("val_accuracy") is not None:
            postfix["val"] = f"{row['val_accuracy']:.3f}"
        bar.set_postfix(postfix, refresh=False)

    try:
        job = Run(config, progress=progress)
    except _refusals() as error:            # refused while building: nothing was spent
        if bar is not None:
            bar.close()
        _fail(str(error))
    try:
        run_dir, summary = job.execute()
    except Exception as error:               # failed while running: say so in one sentence
        if bar is not None:
            bar.close()
        _fail(f"the run stopped: {type(error).__name__}: {error}", code=1)
    if bar is not None:
        bar.close()
    q = summary["queries"]
    click.echo(
        f"\n{summary['data']['name']}: test accuracy {summary['test_accuracy']:.3f} "
        f"(zero program {summary['start_accuracy']:.3f}, majority class {summary['chance_accuracy']:.3f})\n"
        f"queries: {q['total']:,} = train {q['train']:,} + label-map {q['label-map']:,} + "
        f"validate {q['validate']:,} + test {q['test']:,}; budget {summary['budget']:,}\n"
        f"steps {summary['steps']}, chosen on validation (loss {summary['best_validation_loss']:.3f}, accuracy "
        f"{summary['best_validation_accuracy']:.3f}) at step "
        f"{summary['best_step']}, {summary['wall_seconds']:.0f} s\n"
        f"run folder: {run_dir}  (result.json, metrics.jsonl, accuracy.png)")
    if "comparison" in summary:
        c = summary["comparison"]
        click.echo(f"{c['method']} with the same seed and {c['steps']} steps: test accuracy "
                   f"{c['test_accuracy']:.3f} ({c['queries']['train']:,} train queries) in {run_dir / c['run_dir']}")


@main.command()
@common_options
def demo(budget, seed, method, out, overrides, quiet):
    """Reprogram the embedded pitch model CREPE-tiny (ONNX, black-box) to classify
    ItalyPowerDemand time series. About two minutes on two CPU cores."""
    try:
        config = load_config(base=DEMO, overrides=_with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        _fail(str(error))
    _train(config, quiet)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@common_options
def train(config_file, budget, seed, method, out, overrides, quiet):
    """Train a program and a label map from a TOML config."""
    try:
        config = load_config(config_file, overrides=_with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        _fail(str(error))
    _train(config, quiet)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_name", help="Evaluate on another dataset (its test split).")
def evaluate(run_dir, data_name):
    """Test accuracy of a finished run's program (queries counted under 'test')."""
    from .program import load_program
    try:
        program = load_program(run_dir)
        report = program.evaluate(data_name)
    except _refusals() as error:
        _fail(str(error))
    click.echo(json.dumps(report, indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write predictions to this CSV.")
def predict(run_dir, inputs, output):
    """Predict target labels for INPUTS (a dataset name, .npz, .ts or .txt file)."""
    from .program import load_program
    try:
        program = load_program(run_dir)
        labels, queries = program.predict_dataset(inputs)
    except _refusals() as error:
        _fail(str(error))
    text = "index,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels))
    if output:
        Path(output).write_text(text)
        click.echo(f"{len(labels)} predictions written to {output} ({queries} queries)")
    else:
        click.echo(text, nl=False)


@main.command()
def backends():
    """List the installed backend plugins."""
    from .registry import describe_installed
    rows = describe_installed()
    if not rows:
        click.echo("no backend plugins installed")
    for row in rows:
        click.echo(f"{row['name']:<10} {row['status']:<4} {row['target']:<40} {row['description']}")
