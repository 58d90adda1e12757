"""How a batch is written into a request and how scores are read out of the answer, for each
protocol; and the checks every answer passes before the toolkit uses it.

- ``v2``: Open Inference Protocol / KServe V2 (Triton, MLServer, KServe, Seldon).
- ``tfserving``: TensorFlow-Serving REST ``:predict``.
- ``mlflow``: MLflow's ``/invocations``.
- ``template``: any other JSON API, described declaratively (see ``Template``).

``decode`` turns a parsed JSON body into a ``Prediction`` or raises ``ResponseError`` with one
sentence; it never lets a wrong shape, a missing class, a NaN or a row that is not a
probability distribution through.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np

from blackbox_reprog.backends.base import Prediction
from blackbox_reprog.errors import Refusal
from blackbox_reprog.serve import v2

from .paths import require_path, require_segment
from .transport import ResponseError

#: rows of a ``probs`` answer must sum to 1 within this (servers round to float32 or print
#: a few digits); each value must lie in [-tol, 1 + tol]
PROBABILITY_TOLERANCE = 1e-3

V2_DATATYPES, V2_NUMERIC = v2.DATATYPES, v2.NUMERIC        # one table, shared with bbreprog serve


class Contract:
    """What every answer must look like: the output kind, the classes, k, and class names."""

    def __init__(self, kind: str, num_classes: int, k: int = 1, labels: list[str] | None = None):
        self.kind, self.num_classes, self.k = kind, int(num_classes), int(k)
        self.index = {str(name): i for i, name in enumerate(labels)} if labels else None

    # ---- the checks ------------------------------------------------------------------------
    def scores(self, values: Any, batch: int) -> Prediction:
        array = _numbers(values, "scores")
        if array.shape != (batch, self.num_classes):
            raise ResponseError(f"expected scores of shape ({batch}, {self.num_classes}), got {array.shape}")
        with np.errstate(over="ignore"):
            _finite(array.astype(np.float32))
        if self.kind == "probs":
            low, high = array.min(), array.max()
            worst = float(np.abs(array.sum(axis=1) - 1).max())
            if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE or worst > PROBABILITY_TOLERANCE:
                raise ResponseError(f"expected probabilities (rows in [0, 1] summing to 1 ± {PROBABILITY_TOLERANCE}), "
                                    f"got values in [{low:.4g}, {high:.4g}] and a row sum off by {worst:.3g}")
        return Prediction(self.kind, self.num_classes, scores=array.astype(np.float32))

    def topk(self, labels: Any, scores: Any, batch: int) -> Prediction:
        label_array = self.label_indices(labels)
        score_array = _numbers(scores, "top-k scores")
        shape = (batch, self.k)
        if label_array.shape != shape or score_array.shape != shape:
            raise ResponseError(f"expected top-k labels and scores of shape {shape}, got "
                                f"{label_array.shape} and {score_array.shape}")
        with np.errstate(over="ignore"):
            _finite(score_array.astype(np.float32))
        order = np.argsort(-score_array, axis=1, kind="stable")   # best first, whatever the server's order
        return Prediction("topk", self.num_classes, labels=np.take_along_axis(label_array, order, 1),
                          scores=np.take_along_axis(score_array, order, 1).astype(np.float32))

    def labels(self, values: Any, batch: int) -> Prediction:
        array = self.label_indices(values)
        if array.size != batch or array.ndim > 2:
            raise ResponseError(f"expected {batch} labels, got an array of shape {array.shape}")
        return Prediction("label", self.num_classes, labels=array.reshape(batch, 1))

    def label_indices(self, values: Any) -> np.ndarray:
        """Labels as class indices: integers in [0, C), or names looked up in ``labels``."""
        array = np.asarray(values, dtype=object)
        if self.index is not None:
            flat = [self.index.get(str(v)) for v in array.ravel()]
            missing = [v for v, i in zip(array.ravel(), flat) if i is None]
            if missing:
                raise ResponseError(f"expected labels among the {len(self.index)} configured class names, got {missing[0]!r}")
            return np.asarray(flat, dtype=np.int64).reshape(array.shape)
        try:
            indices = _numbers(values, "labels")
        except ResponseError:
            raise ResponseError("expected integer class labels (or set backend.options.labels to map names), "
                                f"got {_sample(values)}") from None
        if indices.size and (not np.all(indices == np.round(indices)) or indices.min() < 0
                             or indices.max() >= self.num_classes):
            raise ResponseError(f"expected integer labels in [0, {self.num_classes}), got values in "
                                f"[{indices.min():g}, {indices.max():g}]")
        return indices.astype(np.int64)


# ---- protocols ------------------------------------------------------------------------------
class Protocol:
    name = ""
    ready_path: str | None = None          # GET that answers 200 when the model can serve
    infer_path = ""

    def encode(self, x: np.ndarray) -> dict:
        raise NotImplementedError

    def decode(self, body: Any, batch: int, contract: Contract) -> Prediction:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"protocol": self.name, "path": self.infer_path}

    def variant(self) -> str:
        """What, besides the URL, changes the answers to the same inputs (for the model id)."""
        return ""


class V2(Protocol):
    """``POST /v2/models/{name}[/versions/{v}]/infer``; inputs as one flat tensor, outputs by name.

    ``request_outputs`` asks the server for named outputs (MLServer's scikit-learn runtime
    answers ``predict`` unless asked for ``predict_proba``)."""

    name = "v2"

    def __init__(self, model_name: str, model_version: str = "", input_name: str = "input",
                 request_outputs: list[str] | None = None, scores_output: str = "",
                 labels_output: str = ""):
        if not model_name:
            raise Refusal("expected backend.options.model_name for the v2 protocol, got none")
        self.model_path = _model_path("/v2/models", model_name, model_version)
        self.infer_path = self.model_path + "/infer"
        # the model's own readiness, not the server's: a wrong model_name is refused before any query
        self.ready_path = self.model_path + "/ready"
        self.input_name, self.request_outputs = input_name, list(request_outputs or [])
        self.scores_output, self.labels_output = scores_output, labels_output

    def variant(self) -> str:
        return f":outputs={','.join(self.request_outputs)}" if self.request_outputs else ""

    def encode(self, x: np.ndarray) -> dict:
        body = {"inputs": [{"name": self.input_name, "shape": list(x.shape),
                            "datatype": V2_DATATYPES.get(str(x.dtype), "FP32"), "data": x.ravel().tolist()}]}
        if self.request_outputs:
            body["outputs"] = [{"name": name} for name in self.request_outputs]
        return body

    def decode(self, body: Any, batch: int, contract: Contract) -> Prediction:
        outputs = _field(body, "outputs", list)
        by_name = {}
        for entry in outputs:
            if not isinstance(entry, dict) or "name" not in entry or "data" not in entry:
                raise ResponseError(f"expected V2 outputs with a name and data, got {_sample(entry)}")
            by_name[str(entry["name"])] = entry
        if contract.kind == "topk":
            return contract.topk(self._tensor(by_name, self.labels_output or "labels", int_ok=True),
                                 self._tensor(by_name, self.scores_output or "scores"), batch)
        if contract.kind == "label":                  # unnamed: the only output, else "labels"
            name = self.labels_output or ("" if len(by_name) == 1 else "labels")
            return contract.labels(self._tensor(by_name, name, int_ok=True), batch)
        return contract.scores(self._tensor(by_name, self.scores_output), batch)

    @staticmethod
    def _tensor(by_name: dict, name: str, int_ok: bool = False) -> np.ndarray | list:
        if not name:                               # no name configured: the one output there is
            if len(by_name) != 1:
                raise ResponseError(f"expected one output or backend.options.scores_output / labels_output to "
                                    f"choose, got outputs {sorted(by_name)}")
            name = next(iter(by_name))
        if name not in by_name:
            raise ResponseError(f"expected an output named {name!r}, got {sorted(by_name)}")
        entry = by_name[name]
        datatype, shape, data = str(entry.get("datatype", "")).upper(), entry.get("shape"), entry["data"]
        if datatype == "BYTES" and int_ok:         # class names: mapped by the contract
            if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
                raise ResponseError(f"expected a shape list for output {name!r}, got {_sample(shape)}")
            if not isinstance(data, list) or len(data) != math.prod(shape):
                raise ResponseError(f"expected {math.prod(shape)} values for output {name!r} of shape {shape}, "
                                    f"got {_sample(data)}")
            flat = np.empty(len(data), dtype=object)
            for i, value in enumerate(data):
                flat[i] = value
            return flat.reshape(shape)
        if datatype not in V2_NUMERIC:
            raise ResponseError(f"expected a numeric V2 datatype for output {name!r}, got {_sample(entry.get('datatype'))}")
        array = _numbers(data, f"output {name!r}")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise ResponseError(f"expected a shape list for output {name!r}, got {_sample(shape)}")
        if array.size != math.prod(shape):
            raise ResponseError(f"expected {math.prod(shape)} values for output {name!r} of shape {shape}, "
                                f"got {array.size}")
        return array.reshape(shape)


class TFServing(Protocol):
    """``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}``."""

    name = "tfserving"

    def __init__(self, model_name: str, model_version: str = "", scores_output: str = "",
                 labels_output: str = "labels"):
        if not model_name:
            raise Refusal("expected backend.options.model_name for the tfserving protocol, got none")
        model_path = _model_path("/v1/models", model_name, model_version)
        self.ready_path, self.infer_path = model_path, model_path + ":predict"
        self.scores_output, self.labels_output = scores_output, labels_output

    def encode(self, x: np.ndarray) -> dict:
        return {"instances": x.tolist()}

    def decode(self, body: Any, batch: int, contract: Contract) -> Prediction:
        return _decode_rows(_field(body, "predictions", list), batch, contract,
                            self.scores_output or "scores", self.labels_output)


class MLflow(TFServing):
    """``POST /invocations`` with ``{"inputs": [...]}``, answered ``{"predictions": [...]}``."""

    name = "mlflow"

    def __init__(self, scores_output: str = "", labels_output: str = "labels"):
        self.ready_path, self.infer_path = "/ping", "/invocations"
        self.scores_output, self.labels_output = scores_output, labels_output

    def encode(self, x: np.ndarray) -> dict:
        return {"inputs": x.tolist()}


class Template(Protocol):
    """Any JSON API, declared in the config::

        [backend.options]
        protocol = "template"
        path = "/api/classify"
        request = {model = "vision-2", images = "$inputs"}   # "$inputs" becomes the batch
        topk_path = "result.top"          # or scores_path / labels_path
        label_key = "label"               # in each [{label, score}] entry
        score_key = "score"
        labels = ["cat", "dog", ...]      # class names in index order, when labels are names

    Paths are dotted keys; a number indexes a list (``data.0.scores``); "" is the body itself."""

    name = "template"

    def __init__(self, path: str = "", request: dict | str | None = None, scores_path: str = "",
                 topk_path: str = "", labels_path: str = "", label_key: str = "label",
                 score_key: str = "score", health_path: str = ""):
        require_path("path", path)          # both become URLs that carry the key: on the endpoint only
        if health_path:
            require_path("health_path", health_path)
        request = json.loads(request) if isinstance(request, str) else (request or {"inputs": "$inputs"})
        if not _mentions(request, "$inputs"):
            raise Refusal("expected backend.options.request to contain the placeholder \"$inputs\", got none")
        self.infer_path, self.ready_path = path, health_path or None
        self.request = request
        self.scores_path, self.topk_path, self.labels_path = scores_path, topk_path, labels_path
        self.label_key, self.score_key = label_key, score_key

    def variant(self) -> str:
        return ":request=" + json.dumps(self.request, sort_keys=True)

    def encode(self, x: np.ndarray) -> dict:
        return _substitute(copy.deepcopy(self.request), x.tolist())

    def decode(self, body: Any, batch: int, contract: Contract) -> Prediction:
        if contract.kind == "topk":
            rows = _at(body, self.topk_path)
            if not isinstance(rows, list) or len(rows) != batch:
                raise ResponseError(f"expected a list of {batch} top-k lists at {self.topk_path!r}, got {_sample(rows)}")
            labels, scores = [], []
            for row in rows:
                if not isinstance(row, list) or not all(isinstance(e, dict) for e in row):
                    raise ResponseError(f"expected a list of {{{self.label_key}, {self.score_key}}} entries, got {_sample(row)}")
                try:
                    labels.append([e[self.label_key] for e in row])
                    scores.append([e[self.score_key] for e in row])
                except KeyError as missing:
                    raise ResponseError(f"expected the key {missing} in every top-k entry, got {_sample(row)}") from None
            if any(len(r) != contract.k for r in labels):
                raise ResponseError(f"expected {contract.k} entries per example, got {sorted({len(r) for r in labels})}")
            return contract.topk(labels, scores, batch)
        if contract.kind == "label":
            return contract.labels(_at(body, self.labels_path), batch)
        return contract.scores(_at(body, self.scores_path), batch)


def make_protocol(name: str, **options) -> Protocol:
    classes = {"v2": V2, "tfserving": TFServing, "mlflow": MLflow, "template": Template}
    if name not in classes:
        raise Refusal(f"expected backend.options.protocol among {', '.join(classes)}, got {name!r}")
    return classes[name](**options)


# ---- helpers ---------------------------------------------------------------------------------
def _model_path(prefix: str, model_name: object, model_version: object) -> str:
    """``{prefix}/{name}[/versions/{version}]``; the name and the version are one segment each, so
    neither can reach another resource, let alone another host."""
    path = f"{prefix}/{require_segment('model_name', model_name)}"
    if model_version not in ("", None):
        path += f"/versions/{require_segment('model_version', model_version)}"
    return path


def _decode_rows(rows: list, batch: int, contract: Contract, scores_key: str, labels_key: str) -> Prediction:
    """TF-Serving / MLflow predictions: one entry per example — a list of scores, a label, or a
    dict of named outputs."""
    if len(rows) != batch:
        raise ResponseError(f"expected {batch} predictions, got {len(rows)}")
    if rows and all(isinstance(r, dict) for r in rows):
        def column(key):
            try:
                return [r[key] for r in rows]
            except KeyError:
                raise ResponseError(f"expected the output {key!r} in every prediction, got {sorted(rows[0])}") from None
        if contract.kind == "topk":
            return contract.topk(column(labels_key), column(scores_key), batch)
        if contract.kind == "label":
            return contract.labels(column(labels_key), batch)
        return contract.scores(column(scores_key), batch)
    if contract.kind == "topk":
        raise ResponseError(f"expected predictions as {{{labels_key}, {scores_key}}} dicts for top-k, got {_sample(rows[0])}")
    if contract.kind == "label":
        return contract.labels(rows, batch)
    return contract.scores(rows, batch)


def _field(body: Any, key: str, kind: type) -> Any:
    if isinstance(body, dict) and "error" in body and key not in body:
        raise ResponseError(f"expected {key!r} in the answer, got an error: {_sample(body['error'])}")
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        raise ResponseError(f"expected a JSON object with a {kind.__name__} {key!r}, got {_sample(body)}")
    return body[key]


def _numbers(values: Any, what: str) -> np.ndarray:
    """A numeric array from JSON values; booleans and strings are refused, ragged lists too."""
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            raise ResponseError(f"expected numbers for {what}, got true/false among them")
        if isinstance(item, list):
            stack.extend(item)
    try:
        array = np.asarray(values)
    except ValueError:                                      # ragged nesting
        raise ResponseError(f"expected a rectangular array of numbers for {what}, got ragged lists") from None
    if array.dtype.kind not in "iuf":
        raise ResponseError(f"expected numbers for {what}, got {_sample(values)}")
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _finite(array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise ResponseError("expected finite scores, got NaN or infinity")


def _at(body: Any, path: str) -> Any:
    node = body
    for part in [p for p in path.split(".") if p]:
        if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ResponseError(f"expected the path {path!r} in the answer, got no {part!r} in {_sample(node)}")
    return node


def _mentions(node: Any, placeholder: str) -> bool:
    if isinstance(node, dict):
        return any(_mentions(v, placeholder) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, placeholder) for v in node)
    return node == placeholder


def _substitute(node: Any, batch: list) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, batch) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, batch) for v in node]
    return batch if node == "$inputs" else node


def _sample(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
