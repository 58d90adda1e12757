"""A finished run's program: predict, export, report."""
from __future__ import annotations

import json
import traceback
from pathlib import Path

import click

from ...errors import Refusal
from .common import fail, main


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the predictions to this .csv or .json file instead of stdout.")
@click.option("--calibrate", is_flag=True,
              help="Add calibrated probabilities: fit a temperature on the chosen program's scores of the run's "
                   "validation split, read back from the run's answer store when it kept one, else bought (one "
                   "query per validation example, counted under 'validate'). Not needed when program.pt holds "
                   "those scores.")
def predict(run_dir, inputs, output, calibrate):
    """Predict target labels for INPUTS: a dataset name or path (its test split), an .npz
    (x_test or x) or .npy array, a .csv or .txt file of series (one per line), or image files
    (or a folder of them). One query per input, counted under 'test', outside the budget.
    Scores are the label map's (log-scale); probabilities come with a calibration (--calibrate)."""
    from ...backends.base import BackendUnavailable
    from ..calibration import calibrate as calibrate_program
    from ..calibration import saved_calibration
    from ..predict import predict as predict_inputs
    from ..predict import read_labelled_inputs
    from ...run.program import load_program
    if output and Path(output).suffix.lower() not in (".csv", ".json"):
        fail(f"expected --output ending in .csv or .json, got {Path(output).name}")
    try:
        program = load_program(run_dir)
    except Refusal as error:
        fail(str(error))
    try:
        resampled = program.config.data.length > 0      # the run's series were resampled: inputs are too
        found = read_labelled_inputs(inputs, program.transform.target_shape, program.classes, resampled)
        program.check_targets(found.x)                  # before any query, calibration's included
        calibration = saved_calibration(run_dir, program)
        if calibration is None and calibrate:
            calibration = calibrate_program(program, run_dir)
        result = predict_inputs(program, found.x, found.names, found.labels, calibration)
    except Refusal as error:
        fail(str(error))
    except BackendUnavailable as error:
        fail(f"the model is unavailable: {error}; try again later", code=3)
    except Exception as error:               # failed while predicting: the traceback is for a bug report
        traceback.print_exc()
        fail(f"the prediction stopped: {type(error).__name__}: {error}", code=1)
    finally:
        program.backend.close()
    spent = f"{result.queries:,} queries spent"
    if result.retried:
        spent += f", and {result.retried:,} sent again after failures"
    if result.true_labels is not None:
        spent += (f"; accuracy {result.accuracy:.3f} ({result.correct:,} of {len(result.labels):,}) against "
                  "the inputs' labels")
    if calibrate and calibration is not None:   # asked for: say what it was fitted on and what it cost
        c = calibration
        click.echo(f"probabilities calibrated on the run's {c.examples:,} validation examples (temperature "
                   f"{c.temperature:.3g}; their answers: {c.answers})", err=True)
    if not output:
        click.echo(_predictions_csv(result), nl=False)
        click.echo(spent, err=True)          # stderr: stdout stays a plain CSV
        return
    from ...files import atomic_write
    text = _predictions_json(result, run_dir) if output.lower().endswith(".json") else _predictions_csv(result)
    atomic_write(Path(output), text.encode())
    click.echo(f"{len(result.labels):,} predictions written to {output}; {spent}")


def _predictions_csv(result) -> str:
    """input,label,score: one row per input (its index or file path), the score of its label;
    then probability, its calibrated probability, when there is a calibration, and true_label,
    the input's own label, when the inputs were labelled."""
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["input", "label", "score"]
    columns = [result.names, result.labels, [f"{s:.7g}" for s in result.score.tolist()]]
    if result.calibration is not None:
        header.append("probability")
        columns.append([f"{p:.4f}" for p in result.probability.tolist()])
    if result.true_labels is not None:
        header.append("true_label")
        columns.append(result.true_labels)
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return buffer.getvalue()


def _predictions_json(result, run_dir: str) -> str:
    rows = [{"input": name, "label": label, "score": score, "scores": scores}
            for name, label, score, scores in zip(result.names, result.labels, result.score.tolist(),
                                                  result.scores.tolist())]
    if result.calibration is not None:          # each row's probability of its label, and of every class
        for row, probability, probabilities in zip(rows, result.probability.tolist(),
                                                   result.probabilities.tolist()):
            row.update(probability=probability, probabilities=probabilities)
    report = {"run": str(run_dir), "classes": result.classes, "queries": result.queries,
              "retried": result.retried,
              "calibration": None if result.calibration is None else result.calibration.describe()}
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
    from ..export import export_run
    try:
        sidecar = export_run(run_dir, output)
    except Refusal as error:
        fail(str(error))
    except Exception as error:               # failed while exporting: the traceback is for a bug report
        traceback.print_exc()
        first_line = (str(error).splitlines() or [""])[0]     # torch's exporter explains over many lines
        fail(f"the export stopped: {type(error).__name__}: {first_line}", code=1)
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
    from ..report import write_report
    try:
        page, figures = write_report(run_dir, output)
    except Refusal as error:
        fail(str(error))
    except OSError as error:                 # the page or a figure cannot be written
        fail(f"expected a writable place for the report, got {error.filename}: {error.strerror}")
    names = ", ".join(path.name for path in figures) or "none"
    click.echo(f"wrote {page} (figures in {Path(run_dir)}: {names})")
