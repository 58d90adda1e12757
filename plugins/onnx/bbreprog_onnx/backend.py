"""Local ONNX models through onnxruntime (CPU by default, CUDA when asked and available)."""
from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from blackbox_reprog.backends.base import Backend, Capabilities, InputSpec, Prediction, checked_max_batch
from blackbox_reprog.errors import Refusal

from .safety import UnsafeModel, check_model_file, external_locations

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}
#: model files whose assumed output kind or value range was already said, once per process
_NOTED: set[str] = set()


def note_assumptions(path: Path, assumed: dict[str, str]) -> None:
    """Say on stderr, once per model file and process, what was assumed for a model whose file
    carries no bbreprog metadata (``bbreprog.output_kind``, ``bbreprog.value_range``) and whose
    backend.options did not say, and which keys set it."""
    if not assumed or str(path) in _NOTED:
        return
    _NOTED.add(str(path))
    metadata = " or ".join(f"bbreprog.{key}" for key in assumed)
    values = " and ".join(f"{key} {value}" for key, value in assumed.items())
    keys = " and ".join(f"backend.options.{key}" for key in assumed)
    print(f"note: {path.name} has no {metadata} metadata: assuming {values}; set {keys} if that is wrong",
          file=sys.stderr)


def _threads_from_environment() -> int:
    """OMP_NUM_THREADS when it is a plain count, else 0 (onnxruntime's default: every core).
    onnxruntime itself ignores the variable, so processes sharing a CPU (bench workers, or
    yours) would each take every core and slow one another down (benchmarks/results/shared_cpu.md)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() else 0


def _parse_range(text: str) -> tuple[float, float]:
    """'low,high' from the model's metadata."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        low = high = math.nan
    if not low < high:
        raise Refusal(f"expected the model's bbreprog.value_range metadata as 'low,high' with low < high, got {text!r}")
    return low, high


def _resolve(model: str) -> Path:
    """A zoo name (built and cached on first use) or a path to a model file."""
    from blackbox_reprog import zoo
    if model in zoo.zoo_names():
        return zoo.model_path(model)
    path = Path(model).expanduser()
    if not path.exists() and zoo.close_zoo_name(model):
        raise UnsafeModel(f"expected an ONNX model file or a zoo name ({', '.join(zoo.zoo_names())}), got "
                          f"{model!r}, which is neither{zoo.close_zoo_name(model)}")
    return path


def _model_digest(path: Path, locations: list[str]) -> str:
    """sha256 of the model file and, when it has external data, of each data file too (so the
    answer cache sees new weights); a model without external data hashes its bytes alone."""
    digest = hashlib.sha256(path.read_bytes())
    for location in sorted(set(locations)):
        digest.update(b"\0" + location.encode() + b"\0")
        with open(path.parent / location, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class OnnxBackend(Backend):
    """Local ONNX model (onnxruntime; device cpu or cuda)."""

    name = "onnx"
    #: zoo names are served; the model is an ONNX graph, which ``bbreprog export`` copies whole
    capabilities = Capabilities(zoo_models=True, exports_graph=True)

    def __init__(self, model: str | Path, *, device: str = "cpu", max_batch: int | None = None,
                 threads: int = 0, output_kind: str | None = None,
                 value_range: tuple[float, float] | None = None):
        import onnxruntime as ort

        self.path = _resolve(str(model))
        proto = check_model_file(self.path)
        metadata = {p.key: p.value for p in proto.metadata_props}
        self.providers = self._providers(ort, device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) or _threads_from_environment()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        self.device = device

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise Refusal(f"expected a model with one input, got {len(inputs)}: {[i.name for i in inputs]}")
        first = inputs[0]
        shape = first.shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise Refusal(f"expected fixed input dimensions after the batch axis, got {first.shape}")
        if first.type not in _DTYPES:
            raise Refusal(f"expected a floating-point model input, got {first.type}")
        self.input_name = first.name
        assumed = {}
        if output_kind is None and "bbreprog.output_kind" not in metadata:
            assumed["output_kind"] = '"logits" (scores before a softmax)'
        if value_range is None and "bbreprog.value_range" not in metadata:
            assumed["value_range"] = "unbounded (any input value)"
        if value_range is None and "bbreprog.value_range" in metadata:
            value_range = _parse_range(metadata["bbreprog.value_range"])
        self.input_spec = InputSpec(tuple(shape), _DTYPES[first.type],
                                    tuple(value_range) if value_range else (-math.inf, math.inf))
        self.output_kind = output_kind or metadata.get("bbreprog.output_kind", "logits")
        if self.output_kind not in ("logits", "probs"):
            raise Refusal(f"expected an ONNX model output kind of logits or probs, got {self.output_kind!r}"
                          f" (degrade to topk or label with a wrapper)")
        classes = outputs[0].shape[-1]
        if not isinstance(classes, int):
            raise Refusal(f"expected a fixed number of classes in the model output, got {outputs[0].shape}")
        self.num_classes = classes
        self.max_batch = checked_max_batch(max_batch, shape, device)
        self.model_id = "onnx:sha256:" + _model_digest(self.path, external_locations(proto))
        note_assumptions(self.path.resolve(), assumed)     # once the model is known to load

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        available = ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise Refusal(f"expected the CUDA execution provider for device 'cuda', got only: {', '.join(available)}")
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise Refusal(f"expected device 'cpu' or 'cuda', got {device!r}")

    @classmethod
    def onnx_graph(cls, model: str):
        """The model a config names (a zoo name: its verified cached file; or a path) as an
        ``onnx.ModelProto``, vetted by ``check_model_file`` before it is read in full."""
        import onnx

        from blackbox_reprog import zoo
        path = zoo.model_path(model) if model in zoo.zoo_names() else Path(model).expanduser()
        check_model_file(path)
        return onnx.load(str(path))

    def _predict(self, x: np.ndarray) -> Prediction:
        scores = self.session.run(None, {self.input_name: x})[0]   # (b, C)
        return Prediction(self.output_kind, self.num_classes, scores=np.asarray(scores, dtype=np.float32))

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path), "providers": self.session.get_providers()}
