"""The ``bbreprog`` command line.

Exit codes: 0 success; 1 the run failed while running, or a bug (with its traceback); 2 bad
input (config, data, backend, budget, usage) — refused before any query was
spent; 3 the model stopped answering (a remote endpoint's circuit breaker opened) — a
checkpoint was written, try again later.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from .config import ConfigError, RunConfig, load_config, load_run_config
from .errors import Refusal

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


def _close(bar) -> None:
    if bar is not None:
        bar.close()


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


def _train(config: RunConfig, quiet: bool, run_dir: Path | None = None) -> None:
    """Train ``config``; with ``run_dir``, resume the interrupted run in that folder."""
    from tqdm import tqdm

    from .backend import BackendUnavailable
    from .runner import Run
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
        _fail(str(error))
    if job.components.trainer.bound_by_steps():      # the budget does not bind: count steps
        counted, total, unit = "step", config.train.max_steps, " steps"
    else:
        counted, total, unit = "queries", config.budget, "q"
    try:
        run_dir, summary = job.execute(run_dir, resume=run_dir is not None)
    except Refusal as error:                 # found wanting once running (a journal that does not hold up,
        _close(bar)                          # an endpoint that breaks its contract on every attempt)
        _fail(str(error))
    except BackendUnavailable as error:      # the model stopped answering: come back later
        _close(bar)
        _fail(f"the model is unavailable: {error}; continue later with `bbreprog resume {job.run_dir}`",
              code=3)
    except Exception as error:               # failed while running: the traceback is for a bug report
        _close(bar)
        traceback.print_exc()
        _fail(f"the run stopped: {type(error).__name__}: {error}", code=1)
    _close(bar)
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
        _fail(f"expected a readable result.json in {folder}, got one that fails to parse ({type(error).__name__})")


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
@click.option("--quiet", is_flag=True, help="No progress bar.")
def resume(run_dir, quiet):
    """Continue an interrupted run: it is replayed from the start with its seed, every answer
    already paid for read back from its journal's answer store, and goes on where it stopped."""
    folder = Path(run_dir)
    if not (folder / "config.toml").is_file():
        _fail(f"expected a run folder holding config.toml, got {folder}")
    try:
        config = load_run_config(folder)
    except ConfigError as error:
        _fail(str(error))
    if (folder / "result.json").is_file():
        summary = _read_result(folder)
        if "comparison_pending" not in summary:
            _fail(f"expected an interrupted run to resume, got {folder}, which finished (its result.json is "
                  "written); train again to start over")
        from .runner import finish_comparison      # the run finished; the comparison it asked for did not
        try:
            summary = finish_comparison(config, folder, summary)
        except Refusal as error:
            _fail(str(error))
        _echo_comparison(summary, folder)
        return
    from .journal import JOURNAL
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
    from .program import load_program
    try:
        program = load_program(run_dir)
        report = program.evaluate(data_name)
    except Refusal as error:
        _fail(str(error))
    click.echo(json.dumps(report, indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the predictions to this .csv or .json file instead of stdout.")
def predict(run_dir, inputs, output):
    """Predict target labels for INPUTS: a dataset name or path (its test split), an .npz
    (x_test or x) or .npy array, a .csv or .txt file of series (one per line), or image files
    (or a folder of them). One query per input, counted under 'test', outside the budget."""
    from .backend import BackendUnavailable
    from .predict import predict as predict_inputs
    from .predict import read_labelled_inputs
    from .program import load_program
    if output and Path(output).suffix.lower() not in (".csv", ".json"):
        _fail(f"expected --output ending in .csv or .json, got {Path(output).name}")
    try:
        program = load_program(run_dir)
    except Refusal as error:
        _fail(str(error))
    try:
        # data.length, once the config has it: the run's series were resampled, so inputs are too
        resampled = bool(getattr(program.config.data, "length", 0))
        found = read_labelled_inputs(inputs, program.transform.target_shape, program.classes, resampled)
        result = predict_inputs(program, found.x, found.names, found.labels)  # all checked before the first query
    except Refusal as error:
        _fail(str(error))
    except BackendUnavailable as error:
        _fail(f"the model is unavailable: {error}; try again later", code=3)
    except Exception as error:               # failed while predicting: the traceback is for a bug report
        traceback.print_exc()
        _fail(f"the prediction stopped: {type(error).__name__}: {error}", code=1)
    finally:
        program.backend.close()
    spent = f"{result.queries:,} queries spent"
    if result.retried:
        spent += f", and {result.retried:,} sent again after failures"
    if result.true_labels is not None:
        spent += (f"; accuracy {result.accuracy:.3f} ({result.correct:,} of {len(result.labels):,}) against "
                  "the inputs' labels")
    if not output:
        click.echo(_predictions_csv(result), nl=False)
        click.echo(spent, err=True)          # stderr: stdout stays a plain CSV
        return
    from .files import atomic_write
    text = _predictions_json(result, run_dir) if output.lower().endswith(".json") else _predictions_csv(result)
    atomic_write(Path(output), text.encode())
    click.echo(f"{len(result.labels):,} predictions written to {output}; {spent}")


def _predictions_csv(result) -> str:
    """input,label,score: one row per input (its index or file path), the score of its label;
    then true_label, the input's own label, when the inputs were labelled."""
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [result.names, result.labels, [f"{s:.7g}" for s in result.score.tolist()]]
    if result.true_labels is not None:
        columns.append(result.true_labels)
    writer.writerow(["input", "label", "score", "true_label"][:len(columns)])
    writer.writerows(zip(*columns))
    return buffer.getvalue()


def _predictions_json(result, run_dir: str) -> str:
    rows = [{"input": name, "label": label, "score": score, "scores": scores}
            for name, label, score, scores in zip(result.names, result.labels, result.score.tolist(),
                                                  result.scores.tolist())]
    report = {"run": str(run_dir), "classes": result.classes, "queries": result.queries,
              "retried": result.retried}
    if result.true_labels is not None:          # labelled inputs: each row's own label, and the score
        for row, true_label in zip(rows, result.true_labels):
            row["true_label"] = true_label
        report.update(accuracy=result.accuracy, correct=result.correct)
    return json.dumps({**report, "predictions": rows}, indent=2) + "\n"


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write; the class names go beside it, in a .json file of the same name.")
def export(run_dir, output):
    """Write a finished run as one ONNX model: program (θ as constants) → source model → label
    map, answering 'scores' (one per target class) and 'label' (the index of the best). A model
    that is not a local ONNX file (a remote API) is left out: the program and the head are
    written as FILE.program.onnx and FILE.head.onnx, to run around your own call to it. No query
    is spent."""
    from .export import export_run
    try:
        sidecar = export_run(run_dir, output)
    except Refusal as error:
        _fail(str(error))
    except Exception as error:               # failed while exporting: the traceback is for a bug report
        traceback.print_exc()
        first_line = (str(error).splitlines() or [""])[0]     # torch's exporter explains over many lines
        _fail(f"the export stopped: {type(error).__name__}: {first_line}", code=1)
    shape = ", ".join(map(str, sidecar["input"]["shape"]))
    classes = f"classes in {Path(output).with_suffix('.json')}"
    if "head" not in sidecar:
        click.echo(f"wrote {output}: x ({shape}) → scores (N, {len(sidecar['classes'])}), label (N,); {classes}")
        return
    model_input = ", ".join(map(str, sidecar["program"]["output"]["shape"]))
    folder = Path(output).parent
    click.echo(f"wrote {folder / sidecar['program']['file']}: x ({shape}) → model_input ({model_input}); "
               f"{folder / sidecar['head']['file']}: the model's {sidecar['model_call']['answers']} "
               f"({', '.join(sidecar['head']['inputs'])}) → scores (N, {len(sidecar['classes'])}), label (N,); {classes}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="The markdown file to write [RUN_DIR/report.md]; its figures go into RUN_DIR.")
def report(run_dir, output):
    """Describe a run in one markdown page: the run, its config, queries by purpose, accuracy
    and loss curves, final accuracies, the learned program drawn and the label map. Read from
    the run folder alone: no query is spent. An unfinished run gets a partial page."""
    from .report import write_report
    try:
        page, figures = write_report(run_dir, output)
    except Refusal as error:
        _fail(str(error))
    except OSError as error:                 # the page or a figure cannot be written
        _fail(f"expected a writable place for the report, got {error.filename}: {error.strerror}")
    names = ", ".join(path.name for path in figures) or "none"
    click.echo(f"wrote {page} (figures in {Path(run_dir)}: {names})")


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Results folder [runs/bench-<suite name>].")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, help="Cells run at once [0: the number of CPUs].")
@click.option("--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True,
              help="process: a local process pool; serial: one cell after another in this process; "
                   "ray: each cell a Ray task (pip install 'blackbox-reprog[ray]').")
@click.option("--budgets", metavar="N,N,…", help="Only these budgets instead of the suite's (e.g. the smallest on a CPU).")
@click.option("--seeds", metavar="S,S,…", help="Only these seeds instead of the suite's.")
@click.option("--pairs", metavar="NAME,…", help="Only these pairs of the suite.")
@click.option("--methods", metavar="NAME,…", help="Only these methods of the suite.")
@click.option("--report", is_flag=True,
              help="Run no cell: write the results of the cells finished in OUT by earlier commands "
                   "(e.g. several restricted ones), the others marked 'not run'.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(suite_file, out, jobs, executor, budgets, seeds, pairs, methods, report, quiet):
    """Run a benchmark suite: every pair × method × budget × seed, resuming a half-finished
    one; writes results.md, results.json and a plot per pair into OUT."""
    from .bench import SuiteError, check_suite, headline, load_suite, restricted, run_suite
    try:
        suite = restricted(load_suite(suite_file), budgets=budgets, seeds=seeds, pairs=pairs, methods=methods)
        check_suite(suite)
    except SuiteError as error:
        _fail(str(error))
    folder = Path(out) if out else Path("runs") / f"bench-{suite.name}"
    progress = None if quiet or report else _BenchProgress(len(suite.cells()))
    try:
        results = run_suite(suite, folder, jobs=jobs, executor=executor,
                            on_event=progress.event if progress else None, report_only=report)
    except SuiteError as error:
        _fail(str(error))
    finally:
        if progress:
            progress.close()
    click.echo(headline(results))
    count = {status: sum(c["status"] == status for c in results["cells"])
             for status in ("done", "skipped", "failed", "not run")}
    not_run = f", {count['not run']} not run" if count["not run"] else ""
    click.echo(f"{count['done']} cells done ({results['ran']} run now, {count['done'] - results['ran']} from an "
               f"earlier run), {count['skipped']} skipped, {count['failed']} failed{not_run}, in "
               f"{results['seconds']:.0f} s; results: {folder / 'results.md'}")
    if count["failed"]:
        failed = [f"{c['id']}: {c['reason']}" for c in results["cells"] if c["status"] == "failed"]
        more = f"; and {len(failed) - 3} more, listed in results.md" if len(failed) > 3 else ""
        _fail(f"{count['failed']} cells failed ({'; '.join(failed[:3])}{more}); run the same command again to "
              "retry them", code=1)


class _BenchProgress:
    """A bar for the whole suite (cells) and one per running cell (queries of its budget)."""

    def __init__(self, cells: int):
        from tqdm import tqdm
        self._tqdm = tqdm
        self.suite = tqdm(total=cells, unit="cell", desc="suite", dynamic_ncols=True, file=sys.stderr, position=0)
        self.running: dict = {}

    def event(self, kind: str, cell_id: str, info: dict) -> None:
        if kind == "start":
            self.running[cell_id] = self._tqdm(total=None, unit="q", unit_scale=True, desc=cell_id, leave=False,
                                               dynamic_ncols=True, file=sys.stderr, position=len(self.running) + 1)
        elif kind == "progress" and cell_id in self.running:
            bar = self.running[cell_id]
            bar.total = info["budget"]
            bar.update(info["queries"] - bar.n)
        elif kind in ("done", "skipped", "failed", "resumed"):
            bar = self.running.pop(cell_id, None)
            if bar is not None:
                bar.close()
            self.suite.update(1)
            if kind == "done":
                self.suite.set_postfix_str(f"{cell_id}: {info['test_accuracy']:.3f}")

    def close(self) -> None:
        for bar in self.running.values():
            bar.close()
        self.suite.close()


@main.command()
def backends():
    """List the installed backend plugins."""
    from .registry import describe_installed
    rows = describe_installed()
    if not rows:
        click.echo("no backend plugins installed")
    for row in rows:
        click.echo(f"{row['name']:<10} {row['status']:<4} {row['target']:<40} {row['description']}")


def _backend_options(pairs: tuple[str, ...]) -> dict:
    """--option KEY=VALUE pairs; values are TOML scalars or lists, bare words are strings."""
    import tomllib
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"expected --option KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw.strip()
    return options


@main.command()
@click.argument("model")
@click.option("--backend", "backend_name", default="onnx", show_default=True,
              help="Backend plugin that loads MODEL (see `bbreprog backends`).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option, e.g. --option threads=2 (values are TOML).")
@click.option("--name", help="Model name in the URLs [MODEL's file stem].")
@click.option("--port", type=int, default=8500, show_default=True, help="Port on 127.0.0.1; 0 picks a free one.")
@click.option("--output", type=click.Choice(["probs", "topk", "label"]),
              help="Answer less than the model gives, like a stingier API.")
@click.option("--k", type=int, default=5, show_default=True, help="Labels answered with --output topk.")
@click.option("--api-key-env", metavar="VAR",
              help="Require the API key held in environment variable VAR (the key itself is never an argument).")
@click.option("--key-header", default="Authorization", show_default=True,
              help="Header carrying the key; Authorization means 'Bearer <key>'.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds added to every answer.")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="Probability that a billed request meets a fault.")
@click.option("--faults", default="429,500,timeout", show_default=True,
              help="Faults to draw from: 429, 500, timeout, malformed.")
@click.option("--timeout-delay", type=float, default=2.0, show_default=True,
              help="Seconds a timeout fault waits before answering.")
@click.option("--retry-after", type=float, default=0.0, show_default=True,
              help="Seconds a 429 asks the client to wait.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option("--fp64", is_flag=True, help="Label V2 scores FP64, as some servers do.")
@click.option("--idempotent", is_flag=True, help="Bill each Idempotency-Key once; resends get the stored answer.")
@click.option("--billing-file", type=click.Path(dir_okay=False), help="Write the final bill here as JSON.")
def serve(model, backend_name, options, name, port, output, k, api_key_env, key_header, latency,
          fault_rate, faults, timeout_delay, retry_after, seed, fp64, idempotent, billing_file):
    """Serve MODEL on 127.0.0.1 over the V2 (KServe), TF-Serving and MLflow protocols, billing
    every query, to try the remote path end to end. Stop with Ctrl-C or SIGTERM: the bill is
    printed as one JSON line."""
    import os
    import signal

    from .files import atomic_write
    from .registry import create_backend
    from .serve import ModelServer

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            _fail(f"expected environment variable {api_key_env} to hold the API key, got it "
                  f"{'empty' if api_key == '' else 'unset'}")
    backend_options = _backend_options(options)
    try:
        backend = create_backend(backend_name, model, **backend_options)
    except Refusal as error:
        _fail(str(error))
    try:
        server = ModelServer(
            backend, name=name or Path(model).stem, port=port, api_key=api_key, key_header=key_header,
            output=output or "", k=k, latency=latency, fault_rate=fault_rate,
            faults=tuple(f.strip() for f in faults.split(",") if f.strip()), timeout_delay=timeout_delay,
            retry_after=retry_after, seed=seed, fp64=fp64, idempotent=idempotent,
            log=lambda line: click.echo(line, err=True))
    except Refusal as error:
        backend.close()
        _fail(str(error))
    except OSError as error:
        backend.close()
        _fail(f"expected a free port on 127.0.0.1, got {port} ({error.strerror or error})")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)        # even when started in the background, which ignores it
    n = server.name
    click.echo(f"serving {n} on {server.url} (V2: /v2/models/{n}/infer, TF-Serving: /v1/models/{n}:predict, "
               f"MLflow: /invocations)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)         # a second signal must not cut the bill short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.stop()
        backend.close()
    bill = server.billing()
    click.echo(json.dumps(bill))
    if billing_file:
        atomic_write(Path(billing_file), (json.dumps(bill, indent=2) + "\n").encode())
