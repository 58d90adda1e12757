"""Safe loading of ONNX files, before onnxruntime ever sees them.

Checked with ``onnx`` first: the file must parse as a model and pass the checker, and every
external-data location must be a plain relative path inside the model's folder — absolute
paths, ``..``, symlinks and hard links that lead elsewhere are refused (CVE-2022-25882,
CVE-2024-27318 and the 2026 link bypasses). Every operator must come from a standard ONNX
domain (or be a function the model itself defines), so a model asking for a custom op is refused
here in one sentence. Custom-op libraries are never loaded: the session options register none,
whatever the model or config names.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from blackbox_reprog.errors import Refusal


class UnsafeModel(Refusal):
    """A model file was refused; the message is one sentence."""


#: operator domains onnx itself defines (and its checker can vouch for); "" is ai.onnx
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training"})


def _graph_tensors(graph):
    """Every TensorProto a graph or function holds: initializers, the values and indices of
    sparse initializers, node attributes (dense and sparse), and those of every subgraph."""
    yield from getattr(graph, "initializer", ())
    for sparse in getattr(graph, "sparse_initializer", ()):
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparses = [*attribute.sparse_tensors]
            if attribute.HasField("sparse_tensor"):
                sparses.append(attribute.sparse_tensor)
            for sparse in sparses:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _nodes(graph):
    """Every node of a graph or function, those of its subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)


def check_operators(model, name: str) -> None:
    """Refuse an operator outside the standard ONNX domains that is not one of the model's own
    functions: only a custom-op library could run it, and none is ever loaded."""
    local = {(function.domain, function.name) for function in model.functions}
    for graph in (model.graph, *model.functions):
        for node in _nodes(graph):
            if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
                raise UnsafeModel(f"expected operators from the standard ONNX domains, got {name}, which uses "
                                  f"{node.op_type!r} from the custom domain {node.domain!r} (custom-op "
                                  f"libraries are never loaded)")


def external_locations(model) -> list[str]:
    """The external-data file named by each tensor of ``model`` (its graph and its functions)."""
    locations = []
    for tensor in (t for graph in (model.graph, *model.functions) for t in _graph_tensors(graph)):
        if tensor.data_location == tensor.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.append(entries.get("location", ""))
    return locations


def check_location(folder: Path, location: str) -> None:
    """Refuse an external-data location that could read outside ``folder``."""
    if not location:
        raise UnsafeModel("expected an external-data location, got an empty one")
    for pure in (PurePosixPath(location), PureWindowsPath(location)):
        if pure.is_absolute() or pure.drive or pure.root:
            raise UnsafeModel(f"expected a relative external-data path, got the absolute path {location!r}")
        if ".." in pure.parts:
            raise UnsafeModel(f"expected an external-data path inside the model's folder, got {location!r} (contains '..')")
    path = folder / location
    if path.is_symlink():
        raise UnsafeModel(f"expected a regular external-data file, got the symbolic link {location!r}")
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise UnsafeModel(f"expected an external-data path inside the model's folder, got {location!r} which resolves to {resolved}")
    if resolved.exists() and os.stat(resolved).st_nlink > 1:
        raise UnsafeModel(f"expected an external-data file with one link, got the hard-linked file {location!r}")


def check_model_file(path: str | Path):
    """Parse, check and vet a model file; returns the parsed ``onnx.ModelProto``."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise UnsafeModel(f"expected an ONNX model file, got {path}, which does not exist")
    if path.is_dir():       # said as such: "does not exist" would send the user looking for a typo
        raise UnsafeModel(f"expected an ONNX model file (.onnx), got {path}, which is a folder")
    if not path.is_file():  # a FIFO or a device: reading one could block or stream forever
        raise UnsafeModel(f"expected an ONNX model file (.onnx), got {path}, which is not a regular file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise UnsafeModel(f"expected an ONNX model file, got {path.name}, which does not parse as one ({type(error).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise UnsafeModel(f"expected an ONNX model file, got {path.name}, which holds no graph")
    for location in external_locations(model):
        check_location(path.parent, location)
    check_operators(model, path.name)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        # the checker's first paragraph on one line (its first line alone can stop mid-sentence)
        first = " ".join(str(error).strip().split("\n\n")[0].split())
        raise UnsafeModel(f"expected a valid ONNX model, got {path.name}, which fails the ONNX checker: {first}") from None
    return model
