"""Nothing the toolkit reads can run code: crafted files, one per refusal.

Each hostile file carries a pickled object whose ``__reduce__`` writes a marker file. A control
first loads the file the unsafe way and sees the marker appear, so the file is really armed; then
every path through which the toolkit reads that kind of file must refuse it in one sentence, with
the marker never written and no example sent to the model.

Already covered in tests/test_onnx_plugin.py (not repeated here): random bytes, a text file and an
empty file as a model; external data at an absolute (POSIX and Windows) path, through ``..``
(also with backslashes), a symlink out of the folder, a symlinked folder, a hard link, an empty
location, in a sparse initializer, in a subgraph; a model failing the onnx checker; a missing
external file. A damaged (not hostile) program.pt is covered in tests/test_cli.py.
"""
from __future__ import annotations

import ast
import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from blackbox_reprog.tools.cli import main
from blackbox_reprog.run.config import load_config, to_toml
from blackbox_reprog.run.journal import AnswerStore, JournalError
from blackbox_reprog.backends.registry import create_backend
from bbreprog_onnx import OnnxBackend, UnsafeModel
from tests.models import CALLS, reset_calls

ROOT = Path(__file__).parents[1]
CALLABLE = ("backend.name=callable", "backend.model=tests.models:signal_model",
            "backend.options={input_shape = [1024], num_classes = 32, value_range = [-10.0, 10.0]}")


class Payload:
    """Unpickling this runs code: it writes ``marker``. A safe loader never does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "CODE-RAN"


def armed(load, marker: Path) -> None:
    """The control: loading the file the unsafe way does run its code."""
    load()
    assert marker.read_text() == "ran", "the crafted file is not armed: the test would prove nothing"
    marker.unlink()


def invoke(*args):
    reset_calls()
    return CliRunner().invoke(main, [str(a) for a in args])


def refused_by_cli(result, message: str, marker: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not marker.exists(), "unpickling ran the file's code"
    assert CALLS["examples"] == 0


# ---------------------------------------------------------------- the code itself (static audit)

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            keywords = {k.arg: k.value for k in node.keywords}
            yield owner, name, keywords, node.lineno


def _constant(keywords: dict, name: str):
    value = keywords.get(name)
    return value.value if isinstance(value, ast.Constant) else "<missing or not a constant>"


SOURCES = sorted(p for folder in ("blackbox_reprog", "plugins", "benchmarks")
                 for p in (ROOT / folder).rglob("*.py") if ".egg-info" not in str(p))


def test_every_loader_in_the_code_is_the_safe_one():
    """Every torch.load passes weights_only=True and every np.load allow_pickle=False, explicitly;
    nothing unpickles (pickle, joblib, dill, cloudpickle, marshal, shelve) and nothing registers
    an onnxruntime custom-op library or loads a native library."""
    assert len(SOURCES) > 30
    problems = []
    for path in SOURCES:
        where = path.relative_to(ROOT)
        for owner, name, keywords, line in _calls(ast.parse(path.read_text(), str(path))):
            if (owner, name) == ("torch", "load") and _constant(keywords, "weights_only") is not True:
                problems.append(f"{where}:{line} torch.load without weights_only=True")
            if owner in ("np", "numpy") and name == "load" and _constant(keywords, "allow_pickle") is not False:
                problems.append(f"{where}:{line} np.load without allow_pickle=False")
            if owner in ("pickle", "joblib", "dill", "cloudpickle", "marshal", "shelve", "_pickle") and \
                    name in ("load", "loads", "Unpickler", "open"):
                problems.append(f"{where}:{line} {owner}.{name}")
            if name in ("register_custom_ops_library", "load_library", "CDLL", "LoadLibrary"):
                problems.append(f"{where}:{line} {name}")
    assert problems == []


def test_a_config_cannot_name_a_custom_op_library(tmp_path):
    """backend.options reach the OnnxBackend constructor only, which has no such option."""
    with pytest.raises(ValueError, match=re.escape(
            "expected backend.options that the onnx backend accepts, got ['custom_op_library']")):
        create_backend("onnx", "crepe-tiny", custom_op_library=str(tmp_path / "libevil.so"))


# ---------------------------------------------------------------- ONNX files that are not ONNX

@pytest.fixture
def sessions(monkeypatch):
    """onnxruntime sessions built (a refused model must never reach onnxruntime)."""
    real, built = ort.InferenceSession, []

    def counting(*args, **kwargs):
        built.append(args[0] if args else kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return built


def refused_model(path: Path, message: str, sessions: list) -> None:
    with pytest.raises(UnsafeModel, match=f"^{re.escape(message)}$"):
        OnnxBackend(str(path))
    assert sessions == [], "a refused model reached onnxruntime"


def test_a_zip_archive_named_onnx_is_refused(tmp_path, sessions):
    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"\x08\x08" * 64)
    refused_model(path, "expected an ONNX model file, got model.onnx, which does not parse as one (DecodeError)",
                  sessions)


def test_a_torch_checkpoint_named_onnx_is_refused(tmp_path, sessions):
    path = tmp_path / "weights.onnx"
    torch.save({"weight": torch.zeros(4, 3)}, path)
    refused_model(path, "expected an ONNX model file, got weights.onnx, which does not parse as one (DecodeError)",
                  sessions)


def test_a_pickle_named_onnx_is_refused_without_running_it(tmp_path, sessions, marker):
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps({"graph": Payload(marker)}))
    armed(lambda: pickle.loads(path.read_bytes()), marker)
    refused_model(path, "expected an ONNX model file, got model.onnx, which does not parse as one (DecodeError)",
                  sessions)
    assert not marker.exists()


# ---------------------------------------------------------------- operators from custom domains

def _io(name: str):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", 4])


def _model(nodes, *, domains=(), functions=(), inputs=None, outputs=None):
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs or [_io("x")], outputs or [_io("y")]),
                              opset_imports=opsets, functions=list(functions))
    model.ir_version = 8
    return model


def _saved(model, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def test_onnx_and_onnxruntime_on_their_own_let_a_custom_op_through_to_the_session(tmp_path):
    """Why the check is ours: the onnx checker passes an unknown domain, so without it the model
    reaches onnxruntime, which fails with its own multi-line error (a traceback in the CLI)."""
    path = _saved(_model([helper.make_node("Pwn", ["x"], ["y"], domain="com.evil")], domains=["com.evil"]),
                  tmp_path / "custom.onnx")
    onnx.checker.check_model(str(path))                      # no complaint
    with pytest.raises(Exception, match="com.evil:Pwn"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("where", ["graph", "subgraph", "function body"])
def test_a_custom_domain_operator_is_refused_before_onnxruntime(tmp_path, sessions, where):
    evil = helper.make_node("Pwn", ["x"], ["y"], domain="com.evil")
    if where == "graph":
        model = _model([evil], domains=["com.evil"])
    elif where == "subgraph":
        branch = helper.make_graph([helper.make_node("Pwn", ["x"], ["b"], domain="com.evil")], "branch", [],
                                   [_io("b")])
        cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
        model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
                       domains=["com.evil"], inputs=[_io("x"), cond])
    else:
        function = helper.make_function("my.local", "Wrap", ["a"], ["b"],
                                        [helper.make_node("Pwn", ["a"], ["b"], domain="com.evil")],
                                        [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
        model = _model([helper.make_node("Wrap", ["x"], ["y"], domain="my.local")],
                       domains=["my.local", "com.evil"], functions=[function])
    refused_model(_saved(model, tmp_path / "custom.onnx"),
                  "expected operators from the standard ONNX domains, got custom.onnx, which uses 'Pwn' from the "
                  "custom domain 'com.evil' (custom-op libraries are never loaded)", sessions)


def test_an_onnxruntime_contrib_operator_is_refused_too(tmp_path, sessions):
    """com.microsoft ops are built into onnxruntime, but onnx cannot check them: refused as well
    (STANDARD_DOMAINS in bbreprog_onnx.safety is the one place to allow a domain)."""
    model = _model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], domains=["com.microsoft"])
    refused_model(_saved(model, tmp_path / "gelu.onnx"),
                  "expected operators from the standard ONNX domains, got gelu.onnx, which uses 'Gelu' from the "
                  "custom domain 'com.microsoft' (custom-op libraries are never loaded)", sessions)


def test_a_function_the_model_defines_in_its_own_domain_loads_and_answers(tmp_path, sessions):
    """Exporters put model-local functions in their own domains: those are not custom ops."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "W")
    function = helper.make_function("pkg.local", "Double", ["a", "w"], ["b"],
                                    [helper.make_node("MatMul", ["a", "w"], ["b"])], [helper.make_opsetid("", 17)])
    model = _model([helper.make_node("Double", ["x", "W"], ["y"], domain="pkg.local")],
                   domains=["pkg.local"], functions=[function])
    model.graph.initializer.append(w)
    path = _saved(model, tmp_path / "local.onnx")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(OnnxBackend(str(path)).query(x).scores, 2 * x)
    assert sessions == [str(path)]


# ---------------------------------------------------------------- torch files (.pt)

@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder for the callable test model: its config.toml, nothing else yet."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.toml").write_text(to_toml(load_config(overrides=CALLABLE + ("train.journal=off",))))
    return folder


def hostile_pt(path: Path, marker: Path, **state) -> Path:
    torch.save({"theta": torch.zeros(3), **state, "extra": Payload(marker)}, path)
    armed(lambda: torch.load(path, weights_only=False), marker)
    return path


def test_a_hostile_program_pt_is_refused_by_evaluate(run_folder, marker):
    hostile_pt(run_folder / "program.pt", marker, label_map={}, classes=["1", "2"])
    refused_by_cli(invoke("evaluate", run_folder),
                   f"expected a readable program.pt in {run_folder}, got one that fails to load (UnpicklingError)",
                   marker)


def test_a_hostile_program_pt_is_refused_by_predict(run_folder, marker):
    hostile_pt(run_folder / "program.pt", marker, label_map={}, classes=["1", "2"])
    refused_by_cli(invoke("predict", run_folder, "ItalyPowerDemand"),
                   f"expected a readable program.pt in {run_folder}, got one that fails to load (UnpicklingError)",
                   marker)


def test_a_hostile_checkpoint_pt_is_refused_by_resume_before_the_journal_opens(run_folder, marker):
    hostile_pt(run_folder / "checkpoint.pt", marker, step=1)
    refused_by_cli(invoke("resume", "--quiet", run_folder),
                   f"expected a readable checkpoint.pt in {run_folder}, got one that fails to load (UnpicklingError)",
                   marker)
    assert sorted(p.name for p in run_folder.iterdir()) == ["checkpoint.pt", "config.toml"]


def test_a_damaged_checkpoint_pt_is_one_sentence_too(run_folder, marker):
    (run_folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    refused_by_cli(invoke("resume", "--quiet", run_folder),
                   f"expected a readable checkpoint.pt in {run_folder}, got one that fails to load (", marker)


def test_zoo_weights_are_loaded_weights_only_even_when_the_pinned_checksum_matches(tmp_path, marker, monkeypatch):
    """Defence in depth: a hostile weights file whose sha256 were pinned still runs nothing."""
    from blackbox_reprog.zoo import build, crepe
    path = tmp_path / "tiny.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload(marker)}, path)
    armed(lambda: torch.load(path, weights_only=False), marker)
    monkeypatch.setattr(crepe, "weights_path", lambda: path)
    monkeypatch.setitem(build.PINNED_SHA256, "crepe-tiny", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(pickle.UnpicklingError):
        build.load_torch("crepe-tiny")
    assert not marker.exists()


# ---------------------------------------------------------------- .npz files (answers, data, inputs)

def hostile_npz(path: Path, marker: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    armed(lambda: [np.load(path, allow_pickle=True)[k] for k in arrays], marker)
    return path


def test_a_stored_answer_holding_a_pickled_object_is_a_journal_error(tmp_path, marker):
    store = AnswerStore(tmp_path / "answers")
    key = "ab" * 32
    path = hostile_npz(store._path(key), marker, kind=np.array([Payload(marker)], dtype=object),
                       num_classes=np.array(3), scores=np.zeros((1, 3), np.float32))
    with pytest.raises(JournalError) as caught:
        store.get(key)
    message = str(caught.value)
    assert message.startswith(f"expected a stored answer in {path}, got an unreadable file (") and "\n" not in message
    assert "Object arrays cannot be loaded when allow_pickle=False" in message
    assert not marker.exists()


@pytest.fixture(scope="module")
def journaled_run(tmp_path_factory) -> Path:
    """A finished run of the callable model with the journal and answer store on."""
    out = tmp_path_factory.mktemp("journaled")
    overrides = [a for pair in (("--set", o) for o in CALLABLE + (
        "train.journal=on", "train.batch_size=8", "estimator.directions=2", "label_map.per_class=2",
        "name=journaled")) for a in pair]
    result = invoke("demo", "--quiet", "--out", out, "--budget", 2000, *overrides)
    assert result.exit_code == 0, result.output
    return out / "journaled"


def poisoned_copy(journaled_run: Path, run: Path, marker: Path) -> Path:
    """The journaled run's folder with every stored answer replaced by a pickle bomb."""
    import shutil
    shutil.copytree(journaled_run, run)
    (run / "result.json").unlink()                              # as a killed run leaves it: resumable
    stored = sorted((run / "answers").rglob("*.npz"))
    assert stored, "the journaled run stored no answers"
    for path in stored:
        hostile_npz(path, marker, kind=np.array([Payload(marker)], dtype=object), num_classes=np.array(32))
    return run


def test_resume_over_a_poisoned_answer_store_buys_nothing_and_runs_nothing(journaled_run, tmp_path, marker):
    """The journal holds each answer's digest: a replaced file is refused before it is parsed."""
    run = poisoned_copy(journaled_run, tmp_path / "run", marker)
    result = invoke("resume", "--quiet", run)
    refused_by_cli(result, f"expected the stored answer {run / 'answers'}", marker)
    assert "to match its digest in the journal, got different bytes" in result.stderr


def test_a_poisoned_shared_answer_store_is_read_without_unpickling(journaled_run, tmp_path, marker):
    """A store shared between runs holds answers this run's journal has no digest for: they
    are parsed, with allow_pickle=False, and refused."""
    store = poisoned_copy(journaled_run, tmp_path / "run", marker) / "answers"
    overrides = [a for pair in (("--set", o) for o in CALLABLE + (
        "train.journal=on", "train.batch_size=8", "estimator.directions=2", "label_map.per_class=2",
        f"train.answer_store={store}")) for a in pair]
    result = invoke("demo", "--quiet", "--out", tmp_path / "runs", "--budget", 2000, *overrides)
    refused_by_cli(result, f"expected a stored answer in {store}", marker)
    assert "got an unreadable file (" in result.stderr
    assert "Object arrays cannot be loaded when allow_pickle=False" in result.stderr


def test_a_dataset_npz_holding_a_pickled_object_is_refused(tmp_path, marker):
    data = hostile_npz(tmp_path / "data" / "evil.npz", marker,
                       x=np.array([[Payload(marker), 1.0]] * 4, dtype=object), y=np.array([0, 1, 0, 1]))
    out = tmp_path / "runs"
    result = invoke("demo", "--quiet", "--out", out, *[a for o in CALLABLE for a in ("--set", o)],
                    "--set", f"data.name={data}")
    refused_by_cli(result, "expected a readable .npz archive at evil.npz, got one that fails to load (Object arrays "
                           "cannot be loaded when allow_pickle=False)", marker)
    assert not out.exists()


def test_inputs_to_predict_holding_a_pickled_object_are_refused(journaled_run, tmp_path, marker):
    inputs = hostile_npz(tmp_path / "inputs.npz", marker, x=np.array([[Payload(marker)] * 24] * 2, dtype=object))
    refused_by_cli(invoke("predict", journaled_run, inputs),
                   "expected a readable .npz archive at inputs.npz, got one that fails to load (ValueError)", marker)
