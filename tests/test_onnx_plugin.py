"""The ONNX backend plugin: safe loading of crafted model files, the spec read from the model,
batching, model ids, and the conformance kit on a tiny model and on the crepe-tiny zoo model.

Every model here is a real ONNX file built with ``onnx.helper`` in ``tmp_path``; the malicious
ones rewrite the external-data entries of a legitimately saved model.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import onnx
import onnxruntime as ort

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from blackbox_reprog.backends.base import InputError  # noqa: E402
from blackbox_reprog.backends.registry import create_backend  # noqa: E402
from blackbox_reprog.backends.testing import CHECKS, check_backend  # noqa: E402
from bbreprog_onnx import OnnxBackend, UnsafeModel, check_model_file  # noqa: E402

W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 10.0      # (4, 3) weights
SECRET = np.full(12, 99.0, np.float32)                                # data outside the folder
ALL_CHECKS = [check.__name__ for check in CHECKS]


# ---------------------------------------------------------------- crafting models

def graph_model(nodes, inputs, outputs, initializers=(), *, metadata=None, sparse=()):
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(initializers), sparse_initializer=list(sparse)),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8                      # onnxruntime 1.20+ reads it; checker accepts it
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def matmul_model(w=W, *, metadata=None, input_dims=("B", 4), elem=TensorProto.FLOAT):
    """(B, 4) float -> (B, 3), y = x @ w, with a dynamic batch axis."""
    x = helper.make_tensor_value_info("x", elem, list(input_dims))
    y = helper.make_tensor_value_info("y", elem, ["B", w.shape[1]])
    return graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x], [y],
                       [numpy_helper.from_array(w.astype(helper.tensor_dtype_to_np_dtype(elem)), "W")],
                       metadata=metadata)


def save(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def save_external(model, folder: Path, name="model.onnx", location="weights.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def relocate(path: Path, location: str) -> Path:
    """Rewrite every external-data location of the model file at ``path`` in place."""
    model = onnx.load(str(path), load_external_data=False)
    rewritten = 0
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                rewritten += 1
    assert rewritten == 1
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the model's folder holding 48 bytes the model must never read."""
    path = tmp_path / "elsewhere" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(SECRET.tobytes())
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def sessions(monkeypatch):
    """Counts onnxruntime.InferenceSession constructions (the backend looks it up per call)."""
    real = ort.InferenceSession
    built = []

    def counting(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("path_or_bytes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return built


def refused(path_or_model, message: str, sessions: list, error=UnsafeModel, **options):
    """The backend refuses with exactly ``message`` (one sentence) and built no session."""
    with pytest.raises(error, match=f"^{re.escape(message)}$") as caught:
        OnnxBackend(str(path_or_model), **options)
    assert "\n" not in str(caught.value)
    assert sessions == [], f"a refused model reached onnxruntime: {sessions}"
    return caught.value


def x_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 4)).astype(np.float32)


# ---------------------------------------------------------------- 1, 2: not a model

def test_random_bytes_are_refused(folder, sessions):
    path = folder / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    refused(path, "expected an ONNX model file, got random.onnx, which does not parse as one (DecodeError)",
            sessions)


def test_text_file_is_refused(folder, sessions):
    path = folder / "notes.onnx"
    path.write_text("hello, this is not a model\n")
    refused(path, "expected an ONNX model file, got notes.onnx, which does not parse as one (DecodeError)",
            sessions)


def test_empty_file_is_refused(folder, sessions):
    path = folder / "empty.onnx"
    path.write_bytes(b"")
    refused(path, "expected an ONNX model file, got empty.onnx, which holds no graph", sessions)


def test_missing_file_is_refused(folder, sessions):
    path = folder / "absent.onnx"
    refused(path, f"expected an ONNX model file, got {path}, which does not exist", sessions)


def test_folder_is_refused_as_a_folder(folder, sessions):
    """A folder exists: calling it missing sent users looking for a typo."""
    refused(folder, f"expected an ONNX model file (.onnx), got {folder}, which is a folder", sessions)


def test_named_pipe_is_refused_unopened(folder, sessions):
    path = folder / "pipe.onnx"
    os.mkfifo(path)
    refused(path, f"expected an ONNX model file (.onnx), got {path}, which is not a regular file", sessions)


# ---------------------------------------------------------------- 3-6: external data escapes

def test_external_data_absolute_path_is_refused(folder, sessions):
    path = relocate(save_external(matmul_model(), folder), "/etc/passwd")
    refused(path, "expected a relative external-data path, got the absolute path '/etc/passwd'", sessions)


def test_external_data_windows_absolute_path_is_refused(folder, sessions):
    path = relocate(save_external(matmul_model(), folder), "C:\\Windows\\win.ini")
    refused(path, "expected a relative external-data path, got the absolute path 'C:\\\\Windows\\\\win.ini'",
            sessions)


def test_external_data_dotdot_is_refused(folder, outside, sessions):
    path = relocate(save_external(matmul_model(), folder), "../elsewhere/secret.bin")
    refused(path, "expected an external-data path inside the model's folder, "
                  "got '../elsewhere/secret.bin' (contains '..')", sessions)
    path = relocate(path, "../secret.bin")
    refused(path, "expected an external-data path inside the model's folder, got '../secret.bin' (contains '..')",
            sessions)


def test_external_data_backslash_dotdot_is_refused(folder, sessions):
    path = relocate(save_external(matmul_model(), folder), "..\\secret.bin")
    refused(path, "expected an external-data path inside the model's folder, got '..\\\\secret.bin' (contains '..')",
            sessions)


def test_external_data_symlink_out_of_the_folder_is_refused(folder, outside, sessions):
    (folder / "link.bin").symlink_to(outside)
    path = relocate(save_external(matmul_model(), folder), "link.bin")
    refused(path, "expected a regular external-data file, got the symbolic link 'link.bin'", sessions)


def test_external_data_through_a_symlinked_folder_is_refused(folder, outside, sessions):
    (folder / "sub").symlink_to(outside.parent, target_is_directory=True)
    path = relocate(save_external(matmul_model(), folder), "sub/secret.bin")
    refused(path, "expected an external-data path inside the model's folder, got 'sub/secret.bin' "
                  f"which resolves to {outside.resolve()}", sessions)


def test_external_data_hard_link_is_refused(folder, outside, sessions):
    os.link(outside, folder / "hard.bin")
    assert os.stat(folder / "hard.bin").st_nlink == 2
    path = relocate(save_external(matmul_model(), folder), "hard.bin")
    refused(path, "expected an external-data file with one link, got the hard-linked file 'hard.bin'", sessions)


def test_external_data_empty_location_is_refused(folder, sessions):
    path = relocate(save_external(matmul_model(), folder), "")
    refused(path, "expected an external-data location, got an empty one", sessions)


def sparse_external_model(location: str):
    """A MatMul whose weights are a sparse initializer with external values."""
    values = numpy_helper.from_array(np.zeros(12, np.float32), "W")
    indices = numpy_helper.from_array(np.arange(12, dtype=np.int64), "W_indices")
    model = graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
                        sparse=[helper.make_sparse_tensor(values, indices, [4, 3])])
    tensor = model.graph.sparse_initializer[0].values
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        tensor.external_data.add(key=key, value=value)
    return model


def test_sparse_initializer_external_data_is_vetted_by_our_own_walk(folder, outside, sessions, monkeypatch):
    """Sparse tensors are walked too, not left to the onnx checker alone (onnxruntime reads
    hard-linked sparse external data)."""
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: None)
    os.link(outside, folder / "hard.bin")
    refused(save(sparse_external_model("hard.bin"), folder / "hard.onnx"),
            "expected an external-data file with one link, got the hard-linked file 'hard.bin'", sessions)
    refused(save(sparse_external_model("../elsewhere/secret.bin"), folder / "dotdot.onnx"),
            "expected an external-data path inside the model's folder, got '../elsewhere/secret.bin' "
            "(contains '..')", sessions)


def test_external_data_in_a_subgraph_attribute_is_vetted(folder, sessions, monkeypatch):
    """A Constant inside an If branch whose tensor lives in /etc/passwd."""
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: None)
    constant = numpy_helper.from_array(np.zeros(3, np.float32), "c")
    constant.ClearField("raw_data")
    constant.data_location = TensorProto.EXTERNAL
    constant.external_data.add(key="location", value="/etc/passwd")
    branch = helper.make_graph([helper.make_node("Constant", [], ["c_out"], value=constant)], "branch", [],
                               [helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [3])])
    model = graph_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    path = save(model, folder / "if.onnx")
    with pytest.raises(UnsafeModel, match="^" + re.escape(
            "expected a relative external-data path, got the absolute path '/etc/passwd'") + "$"):
        check_model_file(path)


# ---------------------------------------------------------------- 7: the onnx checker

def test_model_failing_the_checker_is_refused(folder, sessions):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    model = graph_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [x], [y])
    path = save(model, folder / "ghost.onnx")
    refused(path, "expected a valid ONNX model, got ghost.onnx, which fails the ONNX checker: Nodes in a graph "
                  "must be topologically sorted, however input 'ghost' of node: name: add OpType: Add is not "
                  "output of any previous nodes.", sessions)


def test_missing_external_file_is_refused_by_the_checker(folder, sessions):
    path = relocate(save_external(matmul_model(), folder), "absent.bin")
    error = refused(path, f"expected a valid ONNX model, got model.onnx, which fails the ONNX checker: Data of "
                          f"TensorProto ( tensor name: W) should be stored in {folder}/absent.bin, but it is not "
                          f"regular file.", sessions)
    assert isinstance(error, ValueError)


# ---------------------------------------------------------------- 8: the legitimate case

def test_external_data_model_inside_its_folder_loads_and_answers(folder, sessions):
    path = save_external(matmul_model(), folder)
    assert (folder / "weights.bin").stat().st_size == W.nbytes
    assert check_model_file(path).graph.initializer[0].data_location == TensorProto.EXTERNAL
    backend = OnnxBackend(path)
    assert sessions == [str(path)]
    x = x_batch(5)
    p = backend.query(x)
    assert p.kind == "logits" and p.num_classes == 3 and p.scores.dtype == np.float32
    np.testing.assert_allclose(p.scores, x @ W, rtol=1e-5, atol=1e-6)
    assert backend.describe()["providers"] == ["CPUExecutionProvider"]
    assert backend.describe()["path"] == str(path)


def test_external_data_in_a_subfolder_loads(folder, sessions):
    (folder / "data").mkdir()
    path = save_external(matmul_model(), folder, location="data/weights.bin")
    x = x_batch(2)
    np.testing.assert_allclose(OnnxBackend(path).query(x).scores, x @ W, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 9: devices

def test_cuda_on_a_cpu_only_machine_is_refused(folder, sessions):
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this machine has the CUDA execution provider")
    path = save(matmul_model(), folder / "m.onnx")
    refused(path, "expected the CUDA execution provider for device 'cuda', got only: " + ", ".join(available),
            sessions, error=ValueError, device="cuda")


def test_cuda_refusal_names_the_available_providers(folder, sessions, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    path = save(matmul_model(), folder / "m.onnx")
    refused(path, "expected the CUDA execution provider for device 'cuda', got only: AzureExecutionProvider, "
                  "CPUExecutionProvider", sessions, error=ValueError, device="cuda")


def test_unknown_device_is_refused(folder, sessions):
    path = save(matmul_model(), folder / "m.onnx")
    refused(path, "expected device 'cpu' or 'cuda', got 'tpu'", sessions, error=ValueError, device="tpu")


# ---------------------------------------------------------------- 10: the spec from the model

def test_spec_defaults_without_metadata(folder):
    backend = OnnxBackend(save(matmul_model(), folder / "m.onnx"))
    assert backend.input_spec.shape == (4,)
    assert backend.input_spec.dtype == "float32"
    assert backend.input_spec.value_range == (-math.inf, math.inf)
    assert backend.output_kind == "logits"
    assert backend.num_classes == 3
    assert backend.input_name == "x"
    assert backend.max_batch == 256


def test_spec_from_metadata(folder):
    metadata = {"bbreprog.value_range": "-0.5,2", "bbreprog.output_kind": "probs"}
    backend = OnnxBackend(save(matmul_model(metadata=metadata), folder / "m.onnx"))
    assert backend.input_spec.value_range == (-0.5, 2.0)
    assert backend.output_kind == "probs"
    assert backend.describe()["value_range"] == [-0.5, 2.0]
    with pytest.raises(InputError, match=re.escape("expected values in [-0.5, 2.0], got [-1, 1]")):
        backend.query(np.array([[-1.0, 0.0, 0.0, 1.0]], np.float32))


def test_options_override_metadata(folder):
    metadata = {"bbreprog.value_range": "-0.5,2", "bbreprog.output_kind": "probs"}
    backend = OnnxBackend(save(matmul_model(metadata=metadata), folder / "m.onnx"),
                          value_range=(0.0, 1.0), output_kind="logits")
    assert backend.input_spec.value_range == (0.0, 1.0)
    assert backend.output_kind == "logits"


def test_float64_input_gives_a_float64_spec(folder):
    backend = OnnxBackend(save(matmul_model(elem=TensorProto.DOUBLE), folder / "m.onnx"))
    assert backend.input_spec.dtype == "float64"
    x = x_batch(3).astype(np.float64)
    np.testing.assert_allclose(backend.query(x).scores, x @ W, rtol=1e-5, atol=1e-6)


def test_unsupported_output_kind_is_refused(folder):
    path = save(matmul_model(metadata={"bbreprog.output_kind": "topk"}), folder / "m.onnx")
    with pytest.raises(ValueError, match="^" + re.escape(
            "expected an ONNX model output kind of logits or probs, got 'topk' (degrade to topk or label "
            "with a wrapper)") + "$"):
        OnnxBackend(path)


def test_integer_input_is_refused(folder):
    path = save(matmul_model(elem=TensorProto.INT32), folder / "m.onnx")
    with pytest.raises(ValueError, match="^" + re.escape("expected a floating-point model input, got tensor(int32)") + "$"):
        OnnxBackend(path)


# ---------------------------------------------------------------- 11: batch splitting

def test_batch_splitting_gives_the_same_scores(folder):
    path = save(matmul_model(), folder / "m.onnx")
    whole, split = OnnxBackend(path), OnnxBackend(path, max_batch=2)
    sizes = []
    real_run = split.session.run

    class Session:                              # records the batch size of every call
        def run(self, names, feed):
            sizes.append(len(feed["x"]))
            return real_run(names, feed)

    split.session = Session()
    x = x_batch(5, seed=3)
    a, b = whole.query(x), split.query(x)
    assert sizes == [2, 2, 1]
    assert split.calls_for(5) == 3 and whole.calls_for(5) == 1 and split.calls_for(4) == 2
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.scores, x @ W, rtol=1e-5, atol=1e-6)
    assert len(b) == 5



def test_calls_carry_about_a_million_input_values_unless_told_otherwise(folder):
    """On a CPU, EfficientNet-sized calls of 6 images are faster and 8× lighter than calls of
    256 (benchmarks/results/overhead.md); small inputs keep 256; a GPU keeps 256."""
    from blackbox_reprog.backends.base import local_max_batch
    assert local_max_batch((3, 224, 224)) == 6
    assert local_max_batch((1024,)) == 256 and local_max_batch((1, 1 << 22)) == 1
    assert local_max_batch((3, 224, 224), "cuda") == 256
    path = save(matmul_model(), folder / "m.onnx")
    assert OnnxBackend(path).max_batch == 256 and OnnxBackend(path, max_batch=3).max_batch == 3
    with pytest.raises(ValueError, match="expected max_batch of at least 1, got 0"):
        OnnxBackend(path, max_batch=0)


def test_threads_default_to_omp_num_threads_so_processes_sharing_a_cpu_do_not_fight(folder, monkeypatch):
    path = save(matmul_model(), folder / "m.onnx")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert OnnxBackend(path).session.get_session_options().intra_op_num_threads == 1
    assert OnnxBackend(path, threads=3).session.get_session_options().intra_op_num_threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")      # OpenMP's nested form: not a plain count
    assert OnnxBackend(path).session.get_session_options().intra_op_num_threads == 0
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert OnnxBackend(path).session.get_session_options().intra_op_num_threads == 0


# ---------------------------------------------------------------- 12: model ids

def test_model_id_is_the_file_checksum_and_follows_its_bytes(folder):
    path = save(matmul_model(), folder / "m.onnx")
    first = OnnxBackend(path).model_id
    assert first == "onnx:sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert OnnxBackend(path).model_id == first
    save(matmul_model(W + 1.0), path)
    second = OnnxBackend(path).model_id
    assert second != first and second == "onnx:sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_id_follows_the_external_data(folder):
    """New weights in the data file change the answers, so they must change the id too."""
    path = save_external(matmul_model(), folder)
    onnx_bytes = path.read_bytes()
    before = OnnxBackend(path)
    (folder / "weights.bin").write_bytes((W * 2).tobytes())
    after = OnnxBackend(path)
    assert path.read_bytes() == onnx_bytes
    x = x_batch(2)
    np.testing.assert_allclose(after.query(x).scores, x @ (W * 2), rtol=1e-5, atol=1e-6)
    assert after.model_id != before.model_id
    assert after.model_id.startswith("onnx:sha256:") and len(after.model_id) == len("onnx:sha256:") + 64


# ---------------------------------------------------------------- 13: input shapes the toolkit can't drive

def test_non_fixed_feature_dimension_is_refused(folder):
    path = save(matmul_model(input_dims=("B", "L")), folder / "m.onnx")
    with pytest.raises(ValueError, match="^" + re.escape(
            "expected fixed input dimensions after the batch axis, got ['B', 'L']") + "$"):
        OnnxBackend(path)


def test_two_inputs_are_refused(folder):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    path = save(graph_model([helper.make_node("Add", ["a", "b"], ["y"])], [a, b], [y]), folder / "two.onnx")
    with pytest.raises(ValueError, match="^" + re.escape("expected a model with one input, got 2: ['a', 'b']") + "$"):
        OnnxBackend(path)


def test_dynamic_number_of_classes_is_refused(folder):
    """y = x[:, :int(max(x))]: a class count onnxruntime can't infer either."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "C"])
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Cast", ["top"], ["top_int"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["top_int", "one"], ["ends"]),
             helper.make_node("Slice", ["x", "zero", "ends", "one"], ["y"])]
    constants = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                 numpy_helper.from_array(np.array([1], np.int64), "one")]
    path = save(graph_model(nodes, [x], [y], constants), folder / "m.onnx")
    with pytest.raises(ValueError, match="^" + re.escape(
            "expected a fixed number of classes in the model output, got ['B', 'C']") + "$"):
        OnnxBackend(path)


# ---------------------------------------------------------------- 14: the conformance kit

def test_check_backend_passes_on_the_tiny_model(folder):
    path = save(matmul_model(metadata={"bbreprog.value_range": "-1,1"}), folder / "m.onnx")
    backend = create_backend("onnx", str(path), max_batch=2)
    assert isinstance(backend, OnnxBackend) and backend.max_batch == 2
    assert check_backend(backend) == ALL_CHECKS


def test_check_backend_passes_on_crepe_tiny():
    backend = create_backend("onnx", "crepe-tiny")
    assert backend.input_spec.shape == (1024,)
    assert backend.input_spec.value_range == (-10.0, 10.0)
    assert backend.num_classes == 360 and backend.output_kind == "logits"
    assert check_backend(backend) == ALL_CHECKS
    t = np.arange(1024) / 16000
    frame = (0.5 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)[None]
    # bin b is 1997.38 + 20 b cents above 10 Hz; 440 Hz is about bin 128
    cents = 1200 * math.log2(440.0 / 10.0)
    assert abs(int(backend.query(frame).top1()[0]) - (cents - 1997.3794084376191) / 20) <= 2


@pytest.mark.parametrize("text", ["0,1,2", "1,0", "low,high", ""])
def test_malformed_value_range_metadata_is_refused(text):
    from bbreprog_onnx.backend import _parse_range
    with pytest.raises(ValueError, match="expected the model's bbreprog.value_range metadata as 'low,high'"):
        _parse_range(text)
