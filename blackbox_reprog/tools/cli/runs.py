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


class Progress:
    """The training bar (budgeted queries up to what the plan spends, or steps when max_steps
    ends the run before the budget would) and the test pass's bar, on stderr. Every field
    has a fixed width, so the bar keeps its width as the numbers change."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt:>5}/{total_fmt} [{elapsed}<{remaining:>5}, {rate_fmt:>9}{postfix}]"

    def __init__(self, name: str, quiet: bool):
        self.name, self.quiet = name, quiet
        self.bar = self.test_bar = self.trainer = None
        self.status = ""
        self.val: float | None = None                 # the latest validation accuracy

    def start(self, trainer) -> None:
        """Sized from the trainer's plan: a run that is not cut short ends at 100 %."""
        self.trainer, plan = trainer, trainer.plan()
        if trainer.bound_by_steps():                  # the budget does not bind: count steps
            self.counted, self.total, self.unit = "step", trainer.max_steps, " steps"
        else:
            self.counted, self.total, self.unit = "queries", plan["budgeted"], "q"
        self.step_width = len(str(plan["steps"]))

    def _bar(self, desc: str, total: int, unit: str):
        from tqdm import tqdm
        return tqdm(total=total, unit=unit, unit_scale=True, dynamic_ncols=True, desc=desc, file=sys.stderr,
                    bar_format=self.FORMAT, postfix=self.status or None)

    def step(self, row: dict) -> None:
        if self.quiet:
            return
        if row.get("val_accuracy") is not None:
            self.val = row["val_accuracy"]
        loss = "     -" if row["loss"] is None else f"{row['loss']:6.3f}"     # step 0 without training answers
        val = "  -  " if self.val is None else f"{self.val:.3f}"
        self.status = f"step {row['step']:>{self.step_width}}, loss {loss}, val {val}"
        if self.bar is None:                  # drawn at step 0, so a refusal found while starting stays one line
            self.bar = self._bar(self.name, self.total, self.unit)
        if row[self.counted] > self.bar.total:    # retries spent more than the plan: the bar stays within 100 %
            self.bar.total = row[self.counted]
        self.bar.set_postfix_str(self.status, refresh=False)
        self.bar.update(row[self.counted] - self.bar.n)

    def test(self, done: int, total: int) -> None:
        """The final test pass, after training: the training bar ends, saying why when short of 100 %."""
        if self.quiet:
            return
        if self.test_bar is None:
            if self.bar is not None and self.bar.n < self.bar.total:
                stopped = self.trainer.stopped
                self.bar.set_postfix_str(self.status + (", stopped early" if stopped == "early" else
                                                         f", stopped: {stopped}"), refresh=False)
            self.close()
            self.status = ""
            self.test_bar = self._bar(f"{self.name} test", total, "q")
        self.test_bar.update(done - self.test_bar.n)

    def close(self) -> None:
        close(self.bar)
        close(self.test_bar)
        self.bar = self.test_bar = None


def _plan_or_train(config: RunConfig, quiet: bool, dry_run: bool, price: float | None) -> None:
    """demo and train alike: print the cost plan (--dry-run), or train."""
    if dry_run:
        _dry_run(config, price)
    else:
        _train(config, quiet, price=price)


def _train(config: RunConfig, quiet: bool, run_dir: Path | None = None, price: float | None = None) -> None:
    """Train ``config``; with ``run_dir``, resume the interrupted run in that folder."""
    from ...backends.base import BackendUnavailable
    from ...run.runner import Run, interrupted, run_dir_name
    shown_name = Path(config.data.name).name        # the dataset's name, not the folder it is in
    bars = Progress(shown_name, quiet)
    try:
        job = Run(config, progress=bars.step, test_progress=bars.test)
    except Refusal as error:            # refused while building: nothing was spent, nothing drawn
        fail(str(error))
    except KeyboardInterrupt:
        _interrupted(None)
    bars.start(job.components.trainer)
    earlier = Path(config.out) / run_dir_name(config)
    if run_dir is None and interrupted(earlier) is not None:
        click.echo(f"note: {earlier} holds an interrupted run (`bbreprog resume {earlier}` continues it); this run "
                   "starts over in a new folder", err=True)
    try:
        run_dir, summary = job.execute(run_dir, resume=run_dir is not None)
    except Refusal as error:                 # found wanting once running (a journal that does not hold up,
        bars.close()                         # an endpoint that breaks its contract on every attempt)
        fail(str(error))
    except BackendUnavailable as error:      # the model stopped answering: come back later
        bars.close()
        fail(f"the model is unavailable: {error}; continue later with `bbreprog resume {job.run_dir}`",
              code=3)
    except KeyboardInterrupt:                # Ctrl-C: the folder is marked INTERRUPTED
        bars.close()
        _interrupted(job.run_dir)
    except Exception as error:               # failed while running: the traceback is for a bug report
        bars.close()
        traceback.print_exc()
        fail(f"the run stopped: {type(error).__name__}: {error}", code=1)
    bars.close()
    q = summary["queries"]
    probe = f"probe {q['probe']:,} + " if q["probe"] else ""
    retried = f", and {summary['retried_queries']:,} sent again after failures" if summary["retried_queries"] else ""
    retried += _read_back(summary["billing"])
    passes = f"{config.train.patience} validation pass{'es' if config.train.patience != 1 else ''}"
    early = f" (stopped early: {passes} without a lower loss)" if summary["stopped"] == "early" else ""
    click.echo(
        f"\n{shown_name}: test accuracy {summary['test_accuracy']:.3f} "
        f"(zero program {summary['start_accuracy']:.3f}, majority class {summary['chance_accuracy']:.3f})\n"
        f"queries: {q['total']:,} = {probe}train {q['train']:,} + label-map {q['label-map']:,} + "
        f"validate {q['validate']:,} + test {q['test']:,} (outside the budget){retried}; budget "
        f"{summary['budget']:,}: {summary['budgeted_queries']:,} spent, {summary['unspent']:,} unspent\n"
        f"steps {summary['steps']}{early}, chosen on validation (loss {summary['best_validation_loss']:.3f}, accuracy "
        f"{summary['best_validation_accuracy']:.3f}) at step "
        f"{summary['best_step']}, {summary['wall_seconds']:.0f} s\n"
        f"run folder: {run_dir}  (result.json, metrics.jsonl, accuracy.png)")
    for note in against_the_zero_program(summary):
        click.echo(note)
    if price is not None:
        billed = summary["billing"]["possibly_billed"]
        click.echo(f"cost at {price:g} per 1,000 queries: {billed * price / 1000:,.2f} ({billed:,} queries possibly "
                   "billed, the test pass included)")
    _echo_comparison(summary, run_dir)


def _interrupted(folder: Path | None) -> None:
    """Ctrl-C: one line on what was interrupted and how to go on, then exit code 1."""
    from ...run.runner import interrupted
    if folder is None:
        click.echo("interrupted: before the run began; nothing was spent and no run folder was written", err=True)
    else:
        marker = interrupted(folder) or {}
        click.echo(f"interrupted: the run in {folder} stopped at step {marker.get('step', 0)} after "
                   f"{marker.get('queries', 0):,} budgeted queries; continue it with `bbreprog resume {folder}`",
                   err=True)
    sys.exit(1)


def against_the_zero_program(s: dict) -> list[str]:
    """What the run bought compared with sending θ = 0, said when it is nothing."""
    zero_loss, zero_accuracy = s.get("start_validation_loss"), s.get("start_validation_accuracy")
    if s["best_step"] == 0:
        below = f" below the zero program's {zero_loss:.3f}" if zero_loss is not None else ""
        return [f"note: the chosen program is the zero program: no step lowered the validation loss{below}, so "
                f"the {s['queries']['train']:,} training queries bought no improvement (see accuracy.png)"]
    notes = []
    if zero_accuracy is not None and s["best_validation_accuracy"] <= zero_accuracy:
        notes.append(f"note: the chosen program (step {s['best_step']}) is no better than the zero program on "
                     f"validation: accuracy {s['best_validation_accuracy']:.3f} against {zero_accuracy:.3f} (it was "
                     f"chosen for its lower validation loss, {s['best_validation_loss']:.3f} against {zero_loss:.3f})")
    if s["test_accuracy"] < s["start_accuracy"]:
        notes.append(f"note: the chosen program tested below the zero program: {s['test_accuracy']:.3f} against "
                     f"{s['start_accuracy']:.3f}")
    return notes


def _dry_run(config: RunConfig, price: float | None) -> None:
    """The plan: what the run would spend per purpose, with nothing sent and no folder written."""
    from ...run.runner import plan
    try:
        p = plan(config)
    except Refusal as error:
        fail(str(error))
    leftover = (f"train.max_steps = {p['steps']} ends training first" if p["bound_by"] == "max_steps" else
                f"one more step needs a budget of {p['one_more_step_budget']:,}")
    rows = [
        ("probe", p["probe"], "one example first, to check the endpoint's answers" if p["probe"] else
         "none: the model is not remote"),
        ("label-map", p["label-map"], f"the map fitted once, on the {p['train_size']:,} training examples"
         if p["label-map"] else "none: this map is fitted on nothing"),
        ("train", p["train"], f"{p['steps']:,} steps × {p['step']:,} ({p['population']:,} program{'s' if p['population'] != 1 else ''} × batch {p['batch_size']})"),
        ("validate", p["validate"], f"{p['validation_passes']:,} passes × {p['validation_size']:,} (the zero program, "
         f"every {p['eval_every']} steps, after the last step)"),
        ("budgeted", p["budgeted"], f"of the budget of {p['budget']:,}; {p['unspent']:,} stay unspent ({leftover})"),
        ("test", p["test"], f"outside the budget: the chosen and the zero program on {p['test_size']:,} test examples"),
        ("total", p["budgeted"] + p["test"], ""),
    ]
    click.echo(f"plan: {p['data']} on {p['model']}, {p['method']}, budget {p['budget']:,} (nothing is sent, no run "
               "folder is written)")
    for label, queries, what in rows:
        click.echo(f"  {label:<10}{queries:>12,}   {what}".rstrip())
    if p["patience"]:
        click.echo(f"train.patience = {p['patience']}: training may stop sooner, after {p['patience']} validation "
                   "passes without a lower validation loss; what it does not spend is not sent")
    if "comparison" in p:
        c = p["comparison"]
        click.echo(f"then the compared run ({c['method']}, {c['steps']:,} steps): {c['budgeted']:,} budgeted + "
                   f"{c['test']:,} test queries")
    if price is not None:
        planned, most = p["budgeted"] + p["test"], p["budget"] + p["test"]
        click.echo(f"cost at {price:g} per 1,000 queries: {planned * price / 1000:,.2f} as planned, at most "
                   f"{most * price / 1000:,.2f} (the whole budget, retries included, and the test pass)")


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
def demo(budget, seed, method, out, overrides, quiet, dry_run, price):
    """Reprogram the embedded pitch model CREPE-tiny (ONNX, black-box) to classify
    ItalyPowerDemand time series. About two minutes on two CPU cores."""
    try:
        config = load_config(base=DEMO, overrides=with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        fail(str(error))
    _plan_or_train(config, quiet, dry_run, price)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@common_options
def train(config_file, budget, seed, method, out, overrides, quiet, dry_run, price):
    """Train a program and a label map from a TOML config.

    Every config key, with its default and allowed values, is listed in docs/cli.md (section
    "bbreprog train CONFIG_FILE"); `bbreprog init` writes a commented config to start from.
    --dry-run prints what the run would spend before anything is sent."""
    try:
        config = load_config(config_file, overrides=with_method(overrides, method), budget=budget, seed=seed, out=out)
    except ConfigError as error:
        fail(str(error))
    _plan_or_train(config, quiet, dry_run, price)


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
    from ...run.runner import interrupted
    folder = Path(run_dir)
    marker = interrupted(folder)
    if marker is not None and not (folder / "program.pt").is_file():
        fail(f"expected a finished run folder, got {folder}, which was interrupted at step {marker.get('step', '?')}; "
             f"continue it with `bbreprog resume {folder}`")
    try:
        program = load_program(run_dir)
        report = program.evaluate(data_name)
    except Refusal as error:
        fail(str(error))
    report["test_accuracy"] = round(report["test_accuracy"], 4)   # result.json keeps every digit
    click.echo(json.dumps(report, indent=2))
