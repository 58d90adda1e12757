"""A finished run as one ONNX file: program (θ baked in) → source model → label map.

The graph takes a batch of target examples ``x`` (N, *target_shape) and answers ``scores``
(N, K), the label map's score of every target class, and ``label`` (N,), the index of the best
one: the labels ``bbreprog predict`` gives and its scores to within float rounding, without the
toolkit. It is built from three parts joined with ``onnx.compose``:

1. the program, the run's own torch transform exported with θ as a constant (the part of the
   program that depends on θ alone, e.g. the upsampled signal, is computed once, by torch);
2. the source model's ONNX graph, unchanged, its names prefixed with ``source/``;
3. the head: the model's answers turned into log-probabilities as ``outputs.source_log_probs``
   does, then the run's label map (again its own torch code, exported), then the argmax.

A model that is not ours to copy (a remote API, a Python function, or answers cut down to
``topk``/``label``) is exported *around the call*: ``NAME.program.onnx`` (x → the model's input)
and ``NAME.head.onnx`` (the model's answers → scores, label), the user's own call to the model
in between. A JSON sidecar beside the model names the classes and the files. onnx is imported
inside functions only.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backends.base import Backend
from ..errors import Refusal
from ..files import atomic_write
from ..backends.outputs import FLOOR, LABEL_EPSILON, TOPK_TOLERANCE

EXPORTABLE_OUTPUTS = ("", "probs")   # backend.output values one graph reproduces
OPSET = 17                           # for the parts exported around a call (no source model to follow)


def export_run(run_dir: str | Path, out: str | Path) -> dict:
    """Write ``out`` (.onnx) and its sidecar ``out`` with suffix .json; returns the sidecar."""
    from ..run.config import load_run_config
    from ..run.program import Program
    run_dir, out = Path(run_dir), Path(out)
    if out.suffix.lower() != ".onnx":
        raise Refusal(f"expected an output file ending in .onnx, got {out.name}")
    if not (run_dir / "program.pt").is_file():
        raise Refusal(f"expected a finished run folder with program.pt, got {run_dir}")
    config = load_run_config(run_dir)
    # decided before any backend is built, from what its class declares: a remote one would be
    # contacted for nothing
    source = _graph_source(config.backend.name)
    if source is None or config.backend.output not in EXPORTABLE_OUTPUTS:
        return export_around_call(run_dir, config, out)
    program = Program.load(run_dir)
    graph = compose(program, source.onnx_graph(config.backend.model))
    sidecar = {
        "classes": list(program.classes),
        "input": {"name": "x", "shape": ["N", *program.transform.target_shape], "dtype": "float32"},
        "outputs": {"scores": "(N, K) float32 label-map score of each class, in the order of classes",
                    "label": "(N,) int64 index into classes of the best score"},
        "run": str(run_dir),
        "source_model": config.backend.model,
    }
    atomic_write(out, graph.SerializeToString())
    atomic_write(out.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def export_around_call(run_dir: Path, config, out: Path) -> dict:
    """The program and the head as two ONNX files, for a model that only the user can call:
    ``out``'s stem + ``.program.onnx`` (x → model_input) and ``.head.onnx`` (the answers →
    scores, label). The model's spec comes from program.pt: nothing is built or queried."""
    import onnx

    from ..run.program import Program
    program = Program.load(run_dir)
    described = program.model
    model = AnswerSpec(described["output_kind"], int(described["num_classes"]), _answer_k(config, described))
    target = torch.zeros(2, *program.transform.target_shape)                        # (2, *target_shape)
    front = _to_onnx(_Program(program.transform, program.theta, torch.float32), target,
                     ["x"], ["model_input"], OPSET)
    head_inputs, examples = _answer_inputs(model)
    head = _to_onnx(_AnswerHead(program.label_map, model.output_kind, model.num_classes), examples,
                    head_inputs, ["scores", "label"], OPSET)
    paths = {"program": out.with_suffix(".program.onnx"), "head": out.with_suffix(".head.onnx")}
    for part, path in ((front, paths["program"]), (head, paths["head"])):
        part.graph.name = f"reprogrammed-{path.suffixes[0][1:]}"
        part.metadata_props.add(key="bbreprog.classes", value=json.dumps(list(program.classes)))
        onnx.checker.check_model(part, full_check=True)
    shape = list(described["input_shape"])
    sidecar = {
        "classes": list(program.classes),
        "input": {"name": "x", "shape": ["N", *program.transform.target_shape], "dtype": "float32"},
        "outputs": {"scores": "(N, K) float32 label-map score of each class, in the order of classes",
                    "label": "(N,) int64 index into classes of the best score"},
        "program": {"file": paths["program"].name, "input": "x",
                    "output": {"name": "model_input", "shape": ["N", *shape], "dtype": "float32",
                               "value_range": list(described["value_range"])}},
        "model_call": {"model_id": described.get("model_id", ""), "url": described.get("url", ""),
                       "answers": model.output_kind, "num_classes": model.num_classes,
                       "k": model.k if model.output_kind == "topk" else None,
                       "what": "send model_input to the model, one example per row; give its answers to the head"},
        "head": {"file": paths["head"].name, "outputs": ["scores", "label"],
                 "inputs": {name: text.format(C=model.num_classes, k=model.k)
                            for name, text in zip(head_inputs, _ANSWER_DOCS[model.output_kind])}},
        "run": str(run_dir),
        "source_model": config.backend.model,
    }
    atomic_write(paths["program"], front.SerializeToString())
    atomic_write(paths["head"], head.SerializeToString())
    atomic_write(out.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


@dataclass(frozen=True)
class AnswerSpec:
    """What the model's answers hold, as program.pt recorded the model: the head reads these."""
    output_kind: str
    num_classes: int
    k: int


def _answer_k(config, described: dict) -> int:
    """How many labels a topk answer holds: the degradation's k, or the API's option."""
    if "degraded" in described:
        return int(described["degraded"]["k"])
    return int(config.backend.options.get("k", config.backend.k))


_ANSWER_DOCS = {
    "logits": ["(N, {C}) float32 logits as the model answers them"],
    "probs": ["(N, {C}) float32 probabilities as the model answers them"],
    "topk": ["(N, {k}) int64 class indices of the {k} best, best first", "(N, {k}) float32 their probabilities"],
    "label": ["(N, 1) int64 the best class index"],
}


def _answer_inputs(model: AnswerSpec) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """The head's input names and example tensors for the model's kind of answer."""
    if model.output_kind in ("logits", "probs"):
        return ["answers"], (torch.full((2, model.num_classes), 1.0 / model.num_classes),)      # (2, C)
    if model.output_kind == "topk":
        labels = torch.arange(model.k).repeat(2, 1)                                             # (2, k)
        return ["answer_labels", "answer_probs"], (labels, torch.full((2, model.k), 1.0 / model.num_classes))
    return ["answer_labels"], (torch.zeros(2, 1, dtype=torch.int64),)                          # (2, 1)


class _AnswerHead(torch.nn.Module):
    """Answers of any kind → (scores (N, K), label (N,)), the log-probabilities computed as
    ``outputs.source_log_probs`` does (in float64 where it does), then the label map."""

    def __init__(self, label_map, kind: str, num_classes: int):
        super().__init__()
        self.label_map, self.kind, self.num_classes = label_map, kind, num_classes

    def forward(self, first, second=None):
        scores = self.label_map(self._log_probs(first, second))                    # (N, K)
        return scores, scores.argmax(dim=1)

    def _log_probs(self, first, second):
        classes = self.num_classes
        if self.kind == "logits":
            return torch.log_softmax(first.float(), dim=1)                         # (N, C)
        if self.kind == "probs":
            return first.float().clamp_min(FLOOR).log()                            # (N, C)
        if self.kind == "topk":
            labels, scores = first, second.double().clamp_min(FLOOR)               # (N, k), (N, k)
            total = scores.sum(dim=1, keepdim=True)                                # (N, 1)
            scores = scores / torch.where(total > 1.0 + TOPK_TOLERANCE, total, torch.ones_like(total))
            rest = (1.0 - scores.sum(dim=1, keepdim=True)).clamp_min(0.0) / max(classes - labels.shape[1], 1)
            probs = rest.clamp_min(FLOOR).expand(-1, classes).contiguous()         # (N, C)
            return probs.scatter(1, labels, scores).log().float()
        zero = first[:, :1].to(torch.float64) * 0.0                                # (N, 1), follows the batch
        rest = (zero + LABEL_EPSILON / max(classes - 1, 1)).expand(-1, classes).contiguous()   # (N, C)
        return rest.scatter(1, first[:, :1], zero + (1.0 - LABEL_EPSILON)).log().float()


def _graph_source(name: str) -> type[Backend] | None:
    """The class of backend ``name`` when it declares its models ONNX graphs to copy
    (``capabilities.exports_graph``: the onnx plugin); None for any other, or for a plugin not
    installed here (an export around the call needs none)."""
    from ..backends.registry import UnknownBackend, backend_class
    try:
        cls = backend_class(name)
    except UnknownBackend:
        return None
    return cls if cls.capabilities.exports_graph else None


def compose(program, model):
    """One checked ``onnx.ModelProto``: x → program → source model → head → scores, label."""
    import onnx
    from onnx import compose as onnx_compose
    from onnx.helper import tensor_dtype_to_np_dtype

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {t.name for t in model.graph.initializer}   # old files list them among the inputs
    (source_input,) = [i for i in model.graph.input if i.name not in initializers]
    source_output = model.graph.output[0]                        # the scores, as the onnx backend reads them
    input_dtype = tensor_dtype_to_np_dtype(source_input.type.tensor_type.elem_type)
    output_dtype = tensor_dtype_to_np_dtype(source_output.type.tensor_type.elem_type)

    target = torch.zeros(2, *program.transform.target_shape)                        # (2, *target_shape)
    described = program.model
    model_input = torch.zeros(2, *described["input_shape"], dtype=_torch_dtype(input_dtype))
    answers = torch.zeros(2, int(described["num_classes"]), dtype=_torch_dtype(output_dtype))  # (2, C)
    front = _to_onnx(_Program(program.transform, program.theta, model_input.dtype), target,
                     ["x"], ["model_input"], opset)
    # the graph answers as the model does; the head sees what training saw (after any degradation)
    model_kind = described["degraded"]["from"] if "degraded" in described else described["output_kind"]
    head = _to_onnx(_Head(program.label_map, model_kind, described["output_kind"]), answers,
                    ["model_answers"], ["scores", "label"], opset)

    # the source model keeps its own ir_version and opsets; the exported parts follow them
    for part in (front, head):
        part.ir_version = model.ir_version
    source = onnx_compose.add_prefix(model, "source/")
    for part, prefix in ((front, "program/"), (head, "head/")):     # internal names only: keep x, scores, label
        onnx_compose.add_prefix(part, prefix, rename_inputs=False, rename_outputs=False, inplace=True)
    del source.metadata_props[:]            # the source's own metadata (range, kind) describe another graph
    joined = onnx_compose.merge_models(front, source, io_map=[("model_input", "source/" + source_input.name)])
    joined = onnx_compose.merge_models(joined, head, io_map=[("source/" + source_output.name, "model_answers")],
                                       outputs=["scores", "label"])
    joined.graph.name = "reprogrammed"
    joined.metadata_props.add(key="bbreprog.classes", value=json.dumps(list(program.classes)))
    onnx.checker.check_model(joined, full_check=True)
    return joined


class _Program(torch.nn.Module):
    """x (N, *target_shape) → model inputs (N, *source_shape), with the run's θ as a constant."""

    def __init__(self, transform, theta: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.transform, self.dtype = transform, dtype
        self.register_buffer("theta", theta.detach().float()[None])               # (1, d)

    def forward(self, x):
        return self.transform(self.theta, x)[0].to(self.dtype)                    # (N, *source_shape)


class _Head(torch.nn.Module):
    """Model answers (N, C) → (scores (N, K), label (N,)), as ``source_log_probs`` and the label
    map compute them."""

    def __init__(self, label_map, model_kind: str, seen_kind: str):
        super().__init__()
        self.label_map = label_map
        self.model_kind, self.seen_kind = model_kind, seen_kind   # what the model answers, what the run saw

    def forward(self, answers):
        answers = answers.float()
        if self.seen_kind == "logits":
            log_probs = torch.log_softmax(answers, dim=1)                          # (N, C)
        else:                       # probabilities: the model's own, or (degraded) softmax of its logits
            probs = answers if self.model_kind == "probs" else torch.softmax(answers, dim=1)
            log_probs = probs.clamp_min(FLOOR).log()                               # (N, C)
        scores = self.label_map(log_probs)                                         # (N, K)
        return scores, scores.argmax(dim=1)


def _torch_dtype(numpy_dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=numpy_dtype)).dtype


def _to_onnx(module: torch.nn.Module, example, inputs: list[str], outputs: list[str], opset: int):
    """``module`` exported at the source model's opset, with a dynamic batch axis. It is traced
    and frozen first, so torch itself computes everything that depends on constants alone (the
    program's upsampled θ): onnxruntime's Resize differs from torch's interpolation by ~1e-5."""
    import onnx
    buffer = io.BytesIO()
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, not installed.
    # Its deprecation notice and the tracer's warnings (shape checks read as Python numbers) are
    # noise: the composed graph is checked against the toolkit's own predictions in the tests.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        examples = example if isinstance(example, tuple) else (example,)
        frozen = torch.jit.freeze(torch.jit.trace(module.eval(), examples))
        torch.onnx.export(frozen, examples, buffer, dynamo=False, opset_version=opset,
                          input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "N"} for name in inputs + outputs})
    return onnx.load_from_string(buffer.getvalue())
