"""bbreprog predict and bbreprog export on a real short run of the demo pair (CREPE-tiny →
ItalyPowerDemand), and the exported graph's parts against the toolkit's own torch code."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blackbox_reprog.backends.base import Backend, Prediction
from blackbox_reprog.tools.cli import DEMO, main
from blackbox_reprog.run.config import load_config, to_toml
from blackbox_reprog.data import load
from blackbox_reprog.tools.export import _Head, _Program, _to_onnx
from blackbox_reprog.program.label_maps import LABEL_MAPS
from blackbox_reprog.backends.outputs import source_log_probs
from blackbox_reprog.tools.predict import read_inputs
from blackbox_reprog.backends.registry import create_backend
from blackbox_reprog.run.runner import Run
from blackbox_reprog.program.transforms import TRANSFORMS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Recording(Backend):
    """The ONNX backend, keeping every answer: the run's last calls are its final test pass."""

    def __init__(self, inner: Backend):
        self.inner, self.answers = inner, []
        self.name, self.model_id = inner.name, inner.model_id
        self.input_spec, self.output_kind = inner.input_spec, inner.output_kind
        self.num_classes, self.max_batch = inner.num_classes, inner.max_batch

    def _predict(self, x):
        prediction = self.inner._predict(x)
        self.answers.append(prediction.scores)
        return prediction


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short demo run: 2,000 queries, batch 16 so that θ and the iterative map both move."""
    out = tmp_path_factory.mktemp("runs")
    config = load_config(base=DEMO, budget=2000, seed=0, out=str(out),
                         overrides=["train.batch_size=16", "train.eval_every=2", 'name="demo"'])
    backend = Recording(create_backend("onnx", "crepe-tiny"))
    run_dir, summary = Run(config, backend=backend).execute(plot=False)
    saved = torch.load(run_dir / "program.pt", weights_only=True)
    assert summary["best_step"] > 0 and saved["theta"].abs().sum() > 0    # a program to bake, not zeros
    _, test = load("ItalyPowerDemand")
    answers = np.concatenate(backend.answers)[-len(test):]               # (N, 360) the final test pass
    map_ = LABEL_MAPS.make("iterative", 360, 2, per_class=10)
    map_.load_state_dict(saved["label_map"])
    trainer_labels = map_(source_log_probs(Prediction("logits", 360, scores=answers))).argmax(dim=1).numpy()
    return {"run": run_dir, "summary": summary, "test": test, "trainer_labels": trainer_labels,
            "classes": saved["classes"]}


@pytest.fixture(scope="module")
def predicted(finished, tmp_path_factory):
    """``bbreprog predict`` on the run's test split, as JSON."""
    out = tmp_path_factory.mktemp("predicted") / "test.json"
    result = invoke("predict", finished["run"], "ItalyPowerDemand", "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_predict_gives_the_trainers_own_test_predictions(finished, predicted):
    report = predicted
    test, classes = finished["test"], finished["classes"]
    labels = [classes.index(p["label"]) for p in report["predictions"]]
    assert labels == finished["trainer_labels"].tolist()
    correct = int((np.array(labels) == test.y).sum())
    assert correct == round(finished["summary"]["test_accuracy"] * len(test))
    assert report["classes"] == classes and report["queries"] == len(test)
    assert [p["input"] for p in report["predictions"]] == [str(i) for i in range(len(test))]


def test_predict_counts_one_query_per_input(finished, counted, tmp_path):
    x = finished["test"].x[:37]
    np.save(tmp_path / "batch.npy", x)
    result = invoke("predict", finished["run"], tmp_path / "batch.npy", "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"37 predictions written to {tmp_path / 'out.csv'}; 37 queries spent\n"
    assert counted["examples"] == 37
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "input,label,score,probability" and len(lines) == 38


def test_predict_reads_series_one_per_line_and_prints_them(finished, counted, predicted, tmp_path):
    x = finished["test"].x[:3]
    (tmp_path / "three.csv").write_text("\n".join(",".join(f"{v!r}" for v in row) for row in x.tolist()) + "\n\n")
    result = invoke("predict", finished["run"], tmp_path / "three.csv")
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.stdout.splitlines()]
    expected = predicted["predictions"][:3]
    assert rows[0] == ["input", "label", "score", "probability"]
    assert [r[:2] for r in rows[1:]] == [[str(i), p["label"]] for i, p in enumerate(expected)]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([p["score"] for p in expected], abs=1e-5)
    assert result.stderr == "3 queries spent\n" and counted["examples"] == 3


@pytest.mark.parametrize("name, write, message", [
    ("short.npz", lambda p: np.savez(p, x=np.zeros((5, 16))), "expected target examples of shape (24,), got (16,)"),
    ("one.npy", lambda p: np.save(p, np.zeros(24)), "expected target examples of shape (24,), got ()"),
    ("long.csv", lambda p: p.write_text(",".join(["0.5"] * 25) + "\n"), "expected target examples of shape (24,), got (25,)"),
    ("ragged.txt", lambda p: p.write_text("1 2 3\n1 2\n"), "expected every series in ragged.txt to have 3 values like line 1, got 2 on line 2"),
    ("nan.csv", lambda p: p.write_text(",".join(["nan"] * 24) + "\n"), "expected finite target examples, got NaN or infinity in example 1"),
    ("rows.xlsx", lambda p: p.write_text("0.5\n"), "expected a dataset (.ts, .npz, .txt), an array (.npy, .npz), a series "
     "(.csv, .txt) or image (.png, .jpg, .jpeg) file, or a folder of images, got 'rows.xlsx'"),
])
def test_predict_refuses_inputs_of_another_shape_before_any_query(finished, counted, tmp_path, name, write, message):
    write(tmp_path / name)
    result = invoke("predict", finished["run"], tmp_path / name)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n" and result.stdout == ""
    assert counted["examples"] == 0


def test_export_answers_exactly_as_predict(finished, predicted, counted, tmp_path):
    model = tmp_path / "model.onnx"
    result = invoke("export", finished["run"], "-o", model)
    assert result.exit_code == 0, result.output
    assert counted["examples"] == 0                                        # exporting buys nothing
    onnx.checker.check_model(str(model), full_check=True)
    assert json.loads((tmp_path / "model.json").read_text())["classes"] == finished["classes"]

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["scores", "label"]
    scores, label = session.run(None, {"x": finished["test"].x})
    report = predicted["predictions"]
    assert [finished["classes"][i] for i in label.tolist()] == [p["label"] for p in report]
    assert np.abs(scores - np.array([p["scores"] for p in report])).max() < 1e-5


def test_export_refuses_a_wrong_file_name(finished, tmp_path):
    result = invoke("export", finished["run"], "-o", tmp_path / "model.json")
    assert result.exit_code == 2 and result.stderr == "error: expected an output file ending in .onnx, got model.json\n"
    assert not any(tmp_path.iterdir())


CALLABLE = ("--set", "backend.name=callable", "--set", "backend.model=tests.models:signal_model",
            "--set", "backend.options={input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}")


@pytest.mark.parametrize("output", ["", "probs", "topk", "label"])
def test_a_model_only_the_user_can_call_is_exported_around_the_call(output, tmp_path):
    """A run on a Python function (as on a remote API): program.onnx → the user's own call →
    head.onnx gives predict's labels and scores, whatever kind of answer the model gives."""
    from blackbox_reprog.backends.base import CallableBackend
    from blackbox_reprog.backends.degrade import degrade
    from tests.models import CALLS, reset_calls, signal_model
    trained = invoke("demo", "--quiet", "--out", tmp_path, "--budget", 2000, *CALLABLE, "--set", "name=api",
                     "--set", f"backend.output={output!r}", "--set", "train.batch_size=16")
    assert trained.exit_code == 0, trained.output
    predicted = invoke("predict", tmp_path / "api", "ItalyPowerDemand", "-o", tmp_path / "p.json")
    assert predicted.exit_code == 0, predicted.output
    report = json.loads((tmp_path / "p.json").read_text())["predictions"]

    reset_calls()
    exported = invoke("export", tmp_path / "api", "-o", tmp_path / "api.onnx")
    assert exported.exit_code == 0, exported.output
    assert CALLS["examples"] == 0                                          # nothing is queried to export
    kind = output or "logits"
    sidecar = json.loads((tmp_path / "api.json").read_text())
    assert sidecar["program"]["file"] == "api.program.onnx" and sidecar["head"]["file"] == "api.head.onnx"
    assert sidecar["model_call"]["answers"] == kind and not (tmp_path / "api.onnx").exists()
    assert exported.stdout.startswith(f"wrote {tmp_path / 'api.program.onnx'}: x (N, 24) → model_input (N, 1024); ")

    x = load("ItalyPowerDemand")[1].x                                      # (N, 24) the test split
    program = ort.InferenceSession(str(tmp_path / "api.program.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = program.run(None, {"x": x})                           # (N, 1024)
    api = degrade(CallableBackend(signal_model, input_shape=(1024,), num_classes=32,
                                  value_range=(-10.0, 10.0)), output, 5)
    answer = api.query(model_input)                                        # the user's own call
    feeds = {"logits": {"answers": answer.scores}, "probs": {"answers": answer.scores},
             "topk": {"answer_labels": answer.labels, "answer_probs": answer.scores},
             "label": {"answer_labels": answer.labels}}[kind]
    head = ort.InferenceSession(str(tmp_path / "api.head.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in head.get_inputs()] == list(feeds)
    scores, label = head.run(None, feeds)
    assert [sidecar["classes"][i] for i in label.tolist()] == [p["label"] for p in report]
    assert np.abs(scores - np.array([p["scores"] for p in report])).max() < 1e-5


# ---------------------------------------------------------------- the graph's parts, every kind

def run_onnx(module, example, x, outputs):
    model = _to_onnx(module, example, ["x"], outputs, 17)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("kind, target, source, options", [
    ("signal", (24,), (1024,), {"grid": 64}),
    ("signal", (24,), (1024,), {"grid": 64, "subspace": 8}),
    ("frame", (1, 8, 8), (3, 32, 32), {"grid": 4, "inner": 16}),
    ("additive", (3, 8, 8), (3, 16, 16), {"grid": 4, "epsilon": 0.3}),
])
def test_the_exported_program_is_the_torch_program(kind, target, source, options):
    transform = TRANSFORMS.make(kind, target, source, (0.0, 1.0) if len(source) == 3 else (-10.0, 10.0), **options)
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(transform.num_params, generator=generator)
    x = torch.rand(5, *target, generator=generator)
    (got,) = run_onnx(_Program(transform, theta, torch.float32), x[:2], x.numpy(), ["inputs"])
    want = transform(theta[None], x)[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("map_kind", LABEL_MAPS.kinds())     # every registered map exports
@pytest.mark.parametrize("model_kind, seen_kind", [("logits", "logits"), ("logits", "probs"), ("probs", "probs")])
def test_the_exported_head_is_the_label_map(map_kind, model_kind, seen_kind):
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(40, 12, generator=generator)
    answers = logits if model_kind == "logits" else torch.softmax(logits, dim=1)        # (N, C) the model's
    seen = answers if seen_kind == model_kind else torch.softmax(answers, dim=1)         # (N, C) what the run saw
    log_probs = source_log_probs(Prediction(seen_kind, 12, scores=seen.numpy()))
    many_to_one = {"per_class": 2} if LABEL_MAPS.takes(map_kind, "per_class") else {}
    label_map = LABEL_MAPS.make(map_kind, 12, 3, seed=0, **many_to_one).fit(log_probs, torch.arange(40) % 3)
    scores, label = run_onnx(_Head(label_map, model_kind, seen_kind), answers[:2], answers.numpy(), ["scores", "label"])
    want = label_map(log_probs)
    assert np.abs(scores - want.numpy()).max() < 1e-5 and label.tolist() == want.argmax(dim=1).tolist()


# ---------------------------------------------------------------- reading inputs

def test_images_are_read_as_the_training_data_were(tmp_path):
    from PIL import Image
    pixels = np.arange(16 * 12, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.stack([pixels] * 3, axis=2)).save(tmp_path / "b.png")
    x, names = read_inputs([tmp_path / "a.png", tmp_path / "b.png"], (1, 12, 16))
    assert names == ["a.png", "b.png"] and x.shape == (2, 1, 12, 16) and x.dtype == np.float32
    assert np.allclose(x[0, 0], pixels / 255) and np.allclose(x[1], x[0])      # colour made grey
    x, names = read_inputs([tmp_path], (3, 6, 8))                              # a folder, resized, colour
    assert names == ["a.png", "b.png"] and x.shape == (2, 3, 6, 8) and 0 <= x.min() <= x.max() <= 1


def test_arrays_are_read_like_the_data_loader_reads_them(tmp_path):
    images = np.full((2, 1, 4, 4), 255, dtype=np.uint8)
    np.savez(tmp_path / "split.npz", x_train=images[:1], y_train=[0], x_test=images, y_test=[0, 1])
    x, names = read_inputs([tmp_path / "split.npz"], (1, 4, 4))
    assert x.shape == (2, 1, 4, 4) and x.max() == 1.0 and names == ["0", "1"]
    with pytest.raises(ValueError, match=r"expected an array x or x_test in other.npz, got \['y'\]"):
        np.savez(tmp_path / "other.npz", y=[1])
        read_inputs([tmp_path / "other.npz"], (24,))
    with pytest.raises(ValueError, match="expected one dataset, array or series file, or one or more image files, got 2"):
        read_inputs([tmp_path / "split.npz", tmp_path / "other.npz"], (24,))
    with pytest.raises(ValueError, match=r"expected target examples of shape \(24,\) \(series\), got image files"):
        read_inputs([tmp_path / "a.png"], (24,))
