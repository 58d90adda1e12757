"""The wire format of the three protocols the server speaks: a request's JSON parsed into a
batch, a Prediction encoded as each protocol answers it, and ``Refused``, the error status and
one sentence every malformed request is answered with."""
from __future__ import annotations

import json
import math

import numpy as np

from ..backends.base import Backend, Prediction
from . import v2


class Refused(Exception):
    """A request answered with an error status; the message is one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---- requests ------------------------------------------------------------------------------
def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "expected a JSON body, got something that does not parse") from None


def v2_request(request, dtype: str) -> tuple[np.ndarray, str | None]:
    """A V2 infer request → its one input tensor as an array of ``dtype`` and the request's
    ``id`` (echoed in the answer; None when it is not a string)."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) \
            or len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise Refused(400, "expected a JSON object whose 'inputs' holds one tensor object, got "
                           "something else")
    tensor = request["inputs"][0]
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in ("FP32", "FP64"):
        raise Refused(400, f"expected datatype FP32 or FP64, got {str(datatype)[:40]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise Refused(400, f"expected 'shape' as a list of non-negative integers, got {str(shape)[:80]}")
    x = _floats(tensor.get("data"), dtype)
    if x.size != math.prod(shape):
        raise Refused(400, f"expected {math.prod(shape)} values for shape {shape}, got {x.size}")
    request_id = request.get("id") if isinstance(request.get("id"), str) else None
    return x.reshape(shape), request_id


def instances(request, keys: tuple[str, ...], dtype: str) -> np.ndarray:
    """A TF-Serving or MLflow request → its rows under the first of ``keys`` it has (a named,
    columnar input of one column too) as an array of ``dtype``."""
    key = next((k for k in keys if isinstance(request, dict) and k in request), None)
    if key is None:
        raise Refused(400, f"expected a JSON object with {keys[0]!r} (or {keys[1]!r}), got "
                           f"{sorted(request)[:5] if isinstance(request, dict) else type(request).__name__}")
    value = request[key]
    if isinstance(value, dict) and len(value) == 1:       # a named (columnar) input
        value = next(iter(value.values()))
    return _floats(value, dtype)


def _floats(data, dtype: str) -> np.ndarray:
    """JSON numbers (flat or nested lists) → an array of the backend's dtype. Going through
    float64 keeps a float32 sent as its shortest repr bit-identical."""
    try:
        return np.asarray(data, dtype=np.float64).astype(dtype)
    except (TypeError, ValueError):
        raise Refused(400, "expected a rectangular nested list of numbers, got ragged or "
                           "non-numeric data") from None


# ---- answers -------------------------------------------------------------------------------
def v2_answer(name: str, request_id: str | None, p: Prediction, fp64: bool) -> dict:
    """A V2 infer answer; scores labelled FP64 with ``fp64``, as some servers do."""
    return {"model_name": name, "model_version": None, "id": request_id, "parameters": None,
            "outputs": _v2_outputs(p, fp64)}


def _v2_outputs(p: Prediction, fp64: bool) -> list[dict]:
    float_type = "FP64" if fp64 else "FP32"
    b = len(p)
    labels = {"name": "labels", "datatype": "INT64"}
    if p.kind in ("logits", "probs"):
        return [{"name": "scores", "shape": [b, p.num_classes], "datatype": float_type,
                 "data": _flat(p.scores.astype(np.float64))}]
    if p.kind == "topk":
        k = p.labels.shape[1]
        return [{**labels, "shape": [b, k], "data": _flat(p.labels)},
                {"name": "scores", "shape": [b, k], "datatype": float_type,
                 "data": _flat(p.scores.astype(np.float64))}]
    return [{**labels, "shape": [b, 1], "data": _flat(p.labels)}]


def _flat(values: np.ndarray) -> list:
    """Row-major Python numbers; float(v) of a float32 is exact, and json writes its repr."""
    return np.asarray(values).ravel().tolist()


def v2_metadata(name: str, backend: Backend, fp64: bool) -> dict:
    """A V2 model's metadata: its input, its outputs and what the model answers."""
    spec = backend.input_spec
    datatype = v2.DATATYPES.get(spec.dtype, spec.dtype.upper())
    low, high = (v if math.isfinite(v) else None for v in spec.value_range)
    return {
        "name": name, "versions": ["1"], "platform": "blackbox-reprog",
        "inputs": [{"name": "input", "datatype": datatype, "shape": [-1, *spec.shape]}],
        "outputs": _v2_output_metadata(backend, fp64),
        "parameters": {"output_kind": backend.output_kind, "num_classes": backend.num_classes,
                       "value_range": [low, high]}}


def _v2_output_metadata(backend: Backend, fp64: bool) -> list[dict]:
    kind, classes = backend.output_kind, backend.num_classes
    float_type = "FP64" if fp64 else "FP32"
    if kind in ("logits", "probs"):
        return [{"name": "scores", "datatype": float_type, "shape": [-1, classes]}]
    labels = {"name": "labels", "datatype": "INT64"}
    if kind == "topk":
        k = getattr(backend, "k", -1)
        return [{**labels, "shape": [-1, k]}, {"name": "scores", "datatype": float_type, "shape": [-1, k]}]
    return [{**labels, "shape": [-1, 1]}]


def predictions(p: Prediction) -> dict:
    """A TF-Serving or MLflow answer: ``predictions`` as score rows, {labels, scores} dicts
    (top-k) or labels."""
    if p.kind in ("logits", "probs"):
        rows = p.scores.astype(np.float64).tolist()
    elif p.kind == "topk":
        rows = [{"labels": labels, "scores": scores} for labels, scores
                in zip(p.labels.tolist(), p.scores.astype(np.float64).tolist())]
    else:
        rows = p.labels[:, 0].tolist()
    return {"predictions": rows}
