"""Reading a run's results (issue 21): calibrated probabilities beside predict's scores, the
report's per-class accuracy and confusion matrix, the chosen step marked on both accuracy
figures, dataset names (not whole paths) in figure titles, the note for an ONNX model without
bbreprog metadata, and the mixed-size image error naming the odd image.

Real parts: short runs of the demo pair (CREPE-tiny → ItalyPowerDemand), CREPE-tiny's own ONNX
file without its metadata, and PNG files written with Pillow."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from blackbox_reprog.data import load
from blackbox_reprog.errors import Refusal
from blackbox_reprog.run.config import load_config
from blackbox_reprog.run.plot import CHOSEN, accuracy_figure, chosen_point
from blackbox_reprog.run.runner import Run
from blackbox_reprog.tools.calibration import fit_temperature
from blackbox_reprog.tools.cli import DEMO, main
from blackbox_reprog.tools.figures import curves_figure
from blackbox_reprog.tools.report import per_class_section, read_run

onnx = pytest.importorskip("onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def journaled(tmp_path_factory):
    """A short demo run that kept every answer it bought (train.journal on), as training wrote
    it ("trained", program.pt with its calibration entry); the same run as a run written before
    training saved one ("run": the entry removed), and that without its answer store and
    journal (a plain local run's folder)."""
    out = tmp_path_factory.mktemp("runs")
    config = load_config(base=DEMO, budget=2000, seed=0, out=str(out),
                         overrides=["train.batch_size=16", "train.eval_every=2", 'name="trained"', 'train.journal="on"'])
    trained, summary = Run(config).execute()
    run_dir, plain = out / "kept", out / "plain"
    shutil.copytree(trained, run_dir)
    state = torch.load(run_dir / "program.pt", weights_only=True)
    del state["calibration"]
    torch.save(state, run_dir / "program.pt")
    shutil.copytree(run_dir, plain, ignore=shutil.ignore_patterns("answers", "journal.jsonl"))
    return {"trained": trained, "run": run_dir, "plain": plain, "summary": summary}


def predicted(run_dir, tmp_path, *options):
    out = tmp_path / "predictions.json"
    result = invoke("predict", run_dir, "ItalyPowerDemand", "-o", out, *options)
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())


# ---- 1. probabilities ----------------------------------------------------------------------------

def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=3.0, size=(20_000, 4))
    for temperature in (0.5, 2.5):
        p = np.exp(scores / temperature)
        p /= p.sum(axis=1, keepdims=True)
        y = (rng.random((len(p), 1)) > p.cumsum(axis=1)).sum(axis=1)       # one draw from each row
        fitted, nll, nll_softmax = fit_temperature(scores, y)
        assert fitted == pytest.approx(temperature, rel=0.05)
        assert nll <= nll_softmax


def test_a_split_the_program_gets_all_right_is_not_taken_for_certainty():
    """8 validation examples per class, all right by wide margins: the probabilities stay near
    (8 + 1) / (8 + 2), the most 8 successes support, instead of 1."""
    from blackbox_reprog.tools.calibration import Calibration
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 8)
    scores = rng.normal(size=(16, 2)) - 20.0 * np.eye(2)[1 - y]          # the right class far ahead
    calibration = Calibration.fitted(scores, y, "test")
    right = calibration.probabilities(scores)[np.arange(16), y]
    assert right.mean() == pytest.approx(0.9, abs=0.01) and right.max() < 0.999


def test_calibrate_reads_the_chosen_programs_validation_answers_back_from_the_store(journaled, counted, tmp_path):
    summary = journaled["summary"]
    result, report = predicted(journaled["run"], tmp_path, "--calibrate")
    assert counted["examples"] == 1029                              # the test split only: no answer bought
    c = report["calibration"]
    validation = summary["data"]["validation"]
    assert c["examples"] == validation and c["queries"] == 0
    assert c["answers"] == f"{validation} read back from the run's answer store"
    # at T = 1 the NLL is the trainer's own validation loss (ce) of the chosen program: same answers, same map
    assert c["validation_nll_plain_softmax"] == pytest.approx(summary["best_validation_loss"], rel=1e-4)
    assert result.stderr.startswith(f"probabilities calibrated on the run's {validation} validation examples (temperature ")
    for row in report["predictions"]:
        probabilities = np.array(row["probabilities"])
        assert probabilities.sum() == pytest.approx(1.0)
        assert report["classes"][int(probabilities.argmax())] == row["label"]     # the winner does not change
        assert row["probability"] == max(row["probabilities"]) >= 0.5
        z = np.array(row["scores"]) / c["temperature"]
        assert probabilities == pytest.approx(np.exp(z) / np.exp(z).sum())


def test_calibrate_buys_the_validation_answers_a_run_did_not_keep(journaled, counted, tmp_path):
    validation = journaled["summary"]["data"]["validation"]
    result, report = predicted(journaled["plain"], tmp_path, "--calibrate")
    assert counted["examples"] == 1029 + validation
    assert report["calibration"]["queries"] == validation
    assert report["calibration"]["answers"] == f"{validation} bought, counted under validate"
    kept = json.loads((journaled["run"] / "result.json").read_text())["best_validation_loss"]
    assert report["calibration"]["validation_nll_plain_softmax"] == pytest.approx(kept, rel=1e-4)


def test_without_a_calibration_there_are_scores_only(journaled, counted, tmp_path):
    result = invoke("predict", journaled["plain"], "ItalyPowerDemand")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "input,label,score"
    assert result.stderr == "1,029 queries spent\n"
    _, report = predicted(journaled["plain"], tmp_path)
    assert report["calibration"] is None and "probability" not in report["predictions"][0]
    assert counted["examples"] == 2 * 1029


def test_training_saves_the_chosen_programs_validation_scores_and_predict_calibrates_on_them(journaled, counted,
                                                                                            tmp_path):
    """No flag, no query: the scores training computed to choose the program, the same T as
    --calibrate finds reading the same answers back."""
    summary = journaled["summary"]
    saved = torch.load(journaled["trained"] / "program.pt", weights_only=True)["calibration"]
    assert saved["scores"].shape == (summary["data"]["validation"], 2)
    result, report = predicted(journaled["trained"], tmp_path)
    assert counted["examples"] == 1029 and report["calibration"]["queries"] == 0
    assert report["calibration"]["answers"] == "saved in program.pt by training"
    assert report["calibration"]["validation_nll_plain_softmax"] == pytest.approx(summary["best_validation_loss"],
                                                                                  rel=1e-4)
    _, read_back = predicted(journaled["run"], tmp_path, "--calibrate")
    assert report["calibration"]["temperature"] == pytest.approx(read_back["calibration"]["temperature"], rel=1e-4)


def test_validation_scores_saved_in_program_pt_calibrate_without_a_flag(journaled, counted, tmp_path):
    """What training is to save (program.pt's "calibration"): predict uses it, spending nothing more."""
    run = tmp_path / "saved"
    shutil.copytree(journaled["plain"], run)
    state = torch.load(run / "program.pt", weights_only=True)
    rng = np.random.default_rng(1)
    scores = torch.as_tensor(rng.normal(size=(40, 2)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 2, size=40))
    state["calibration"] = {"scores": scores, "labels": labels}
    torch.save(state, run / "program.pt")
    result = invoke("predict", run, "ItalyPowerDemand")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "input,label,score,probability"
    assert result.stderr == "1,029 queries spent\n" and counted["examples"] == 1029
    _, report = predicted(run, tmp_path)
    temperature = fit_temperature(scores.numpy(), labels.numpy())[0]
    assert report["calibration"]["temperature"] == pytest.approx(temperature)
    assert report["calibration"]["answers"] == "saved in program.pt by training"
    assert report["calibration"]["examples"] == 40 and report["calibration"]["queries"] == 0


# ---- 2. the report's per-class results -------------------------------------------------------------

def test_the_report_shows_per_class_accuracy_and_the_confusion_matrix(journaled, tmp_path):
    run = tmp_path / "with-confusion"
    shutil.copytree(journaled["plain"], run)
    result = json.loads((run / "result.json").read_text())
    result.update(classes=["1", "2"], test_confusion=[[400, 113], [120, 396]],
                  test_per_class_accuracy=[400 / 513, 396 / 516])
    (run / "result.json").write_text(json.dumps(result))
    assert invoke("report", run).exit_code == 0
    page = (run / "report.md").read_text()
    section = page.split("## Per class (test)\n", 1)[1].split("\n## ", 1)[0]
    assert "| 1 | 513 | 400 | 0.780 | 2 (113) |" in section
    assert "| 2 | 516 | 396 | 0.767 | 1 (120) |" in section
    assert "| true ↓ predicted → | 1 | 2 |" in section
    assert "| 1 | **400** | 113 |" in section and "| 2 | 120 | **396** |" in section

    for key in ("classes", "test_confusion", "test_per_class_accuracy"):    # an older run: said plainly
        result.pop(key)
    (run / "result.json").write_text(json.dumps(result))
    assert invoke("report", run).exit_code == 0
    older = (run / "report.md").read_text()
    assert "## Per class (test)\n\nresult.json has no test_confusion: this run was written before" in older


def test_many_classes_give_the_least_accurate_and_the_largest_mistakes():
    k = 30
    confusion = np.diag(np.arange(10, 10 + k))                      # class i: 10 + i right
    confusion[5, 7], confusion[12, 3], confusion[0, 29] = 50, 9, 1
    names = [f"c{i}" for i in range(k)]
    names[7] = "a|b"
    lines = per_class_section({"classes": names, "test_confusion": confusion.tolist()}, None)
    text = "\n".join(lines)
    assert "The 20 least accurate of 30 classes" in text
    rows = [line for line in lines if line.startswith("| c") or line.startswith("| a")]
    assert rows[0].startswith("| c5 | 65 | 15 | 0.231 | a\\|b (50) |")       # the least accurate first
    assert "true ↓ predicted →" not in text                                   # no 30 × 30 table
    mistakes = text.split("largest mistakes:", 1)[1]
    assert mistakes.index("| c5 | a\\|b | 50 |") < mistakes.index("| c12 | c3 | 9 |") < mistakes.index("| c0 | c29 | 1 |")


# ---- 3 and 4. the chosen step, and titles --------------------------------------------------------------

def chosen_artists(ax):
    return [a for a in ax.get_children() if a.get_gid() == CHOSEN]


def test_accuracy_png_marks_the_step_the_run_chose(journaled, tmp_path):
    summary = journaled["summary"]
    history = [json.loads(line) for line in (journaled["run"] / "metrics.jsonl").read_text().splitlines()]
    validated = [row for row in history if "val_accuracy" in row]
    # pretend the run chose a validated step other than its last: the mark follows best_step
    row = validated[0]
    chosen = {**summary, "best_step": row["step"], "best_validation_accuracy": row["val_accuracy"],
              "data": {**summary["data"], "name": str(tmp_path / "deep" / "folder" / "my_series.npz")}}
    fig = accuracy_figure(chosen, history)
    ax = fig.axes[0]
    line, star = sorted(chosen_artists(ax), key=lambda a: len(a.get_xdata()), reverse=True)
    assert list(star.get_xdata()) == [row["queries"]] and list(star.get_ydata()) == [row["val_accuracy"]]
    assert list(line.get_xdata()) == [row["queries"]] * 2
    assert f"step {row['step']}" in star.get_label()
    assert ax.get_title().startswith("crepe-tiny → my_series.npz (blackbox, seed 0)")
    assert str(tmp_path) not in ax.get_title()


def test_the_report_curves_mark_the_chosen_step_on_both_panels(journaled, tmp_path):
    run = read_run(journaled["run"])
    summary = journaled["summary"]
    x = chosen_point(summary, run.metrics)
    assert x == next(row["queries"] for row in run.metrics if row["step"] == summary["best_step"] and "val_loss" in row)
    fig = curves_figure(run)
    top, bottom = fig.axes
    for ax, y in ((top, summary["best_validation_accuracy"]), (bottom, summary["best_validation_loss"])):
        star = next(a for a in chosen_artists(ax) if len(a.get_xdata()) == 1)
        assert list(star.get_xdata()) == [x] and list(star.get_ydata()) == [pytest.approx(y)]
    assert fig._suptitle.get_text().startswith("crepe-tiny → ItalyPowerDemand")


def test_step_zero_is_marked_where_the_zero_program_was_validated(journaled):
    summary = {**journaled["summary"], "best_step": 0}
    expected = summary["queries"]["label-map"] + summary["data"]["validation"]
    assert chosen_point(summary, []) == expected


# ---- 5. an ONNX model without bbreprog metadata ---------------------------------------------------------

@pytest.fixture
def bare_model(tmp_path):
    """CREPE-tiny's own ONNX file with its bbreprog metadata taken out."""
    from blackbox_reprog.zoo import model_path
    proto = onnx.load(str(model_path("crepe-tiny")))
    del proto.metadata_props[:]
    path = tmp_path / "my_model.onnx"
    onnx.save(proto, str(path))
    return path


def test_assumed_output_kind_and_value_range_are_said_once(bare_model, tmp_path):
    result = invoke("demo", "--budget", 300, "--out", tmp_path / "runs", "--set", f"backend.model={bare_model}",
                    "--set", "train.batch_size=8", "--set", "estimator.directions=2")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: my_model.onnx")]
    assert notes == ["note: my_model.onnx has no bbreprog.output_kind or bbreprog.value_range metadata: assuming "
                     'output_kind "logits" (scores before a softmax) and value_range unbounded (any input value); '
                     "set backend.options.output_kind and backend.options.value_range if that is wrong"]


def test_a_model_that_says_its_kind_and_range_gets_no_note(bare_model, capsys):
    from bbreprog_onnx import OnnxBackend
    from blackbox_reprog.zoo import model_path
    OnnxBackend(model_path("crepe-tiny")).close()                     # the zoo's file carries its metadata
    OnnxBackend(bare_model, output_kind="logits", value_range=(-1.0, 1.0)).close()
    assert "note:" not in capsys.readouterr().err
    OnnxBackend(bare_model, value_range=(-1.0, 1.0)).close()
    OnnxBackend(bare_model).close()                                  # said once per model file
    assert capsys.readouterr().err == ("note: my_model.onnx has no bbreprog.output_kind metadata: assuming output_kind "
                                       '"logits" (scores before a softmax); set backend.options.output_kind if that '
                                       "is wrong\n")


# ---- 6. images of mixed sizes ---------------------------------------------------------------------------

def write_pngs(root, sizes: dict[str, int]):
    for name, side in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((side, side), 128, np.uint8)).save(path)


@pytest.mark.parametrize("odd", ["cat/0.png", "cat/2.png", "dog/1.png"])
def test_the_odd_image_is_the_one_named(tmp_path, odd):
    sizes = {f"{label}/{i}.png": 32 for label in ("cat", "dog") for i in range(3)}
    sizes[odd] = 40
    write_pngs(tmp_path / "pets", sizes)
    like = next(name for name, side in sorted(sizes.items()) if side == 32)
    with pytest.raises(Refusal) as refused:
        load(str(tmp_path / "pets"))
    assert str(refused.value) == (f"expected every image to be 32x32 like the other 5 (e.g. {like}), got {odd}, "
                                  "which is 40x40")
