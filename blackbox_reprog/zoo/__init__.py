"""A small zoo of real pretrained models, built locally into ONNX files for black-box use.

Weights come from installed pip packages (nothing is downloaded); each ONNX file is exported
once, checked against torch, and cached under ``cache_dir()/models`` with a sha256 sidecar.
Build everything with ``python -m blackbox_reprog.zoo``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import Refusal


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str                        # "crepe-tiny" | "efficientnet-lite0" | "efficientnet-lite0-128"
    description: str
    input_shape: tuple[int, ...]     # one example, without the batch axis
    value_range: tuple[float, float]
    num_classes: int
    output_kind: str                 # "logits"
    licence: str


_ZOO = {
    "crepe-tiny": ZooModel(
        name="crepe-tiny",
        description="CREPE-tiny monophonic pitch estimator: a 1024-sample 16 kHz audio frame "
                    "(z-normalised inside) -> logits over 360 pitch bins of 20 cents "
                    "(~32 Hz to ~2 kHz)",
        input_shape=(1024,),
        # frames are z-normalised inside the model, so this is only a generous bound
        value_range=(-10.0, 10.0),
        num_classes=360,
        output_kind="logits",
        licence="MIT"),
    "efficientnet-lite0": ZooModel(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0 ImageNet classifier: a 224x224 RGB image in [0, 1] "
                    "(normalised inside) -> logits over the 1000 ImageNet classes",
        input_shape=(3, 224, 224),
        value_range=(0.0, 1.0),
        num_classes=1000,
        output_kind="logits",
        licence="Apache-2.0"),
}

# The same network and weights at 128 px: a third of the compute per query (about 2.5× the
# queries an hour on a CPU) for image programs, whose budgets run to 1e5-1e6 queries.
_ZOO["efficientnet-lite0-128"] = dataclasses.replace(
    _ZOO["efficientnet-lite0"], name="efficientnet-lite0-128", input_shape=(3, 128, 128),
    description="EfficientNet-Lite0 ImageNet classifier at 128 px: a 128x128 RGB image in [0, 1] "
                "(normalised inside) -> logits over the 1000 ImageNet classes (the 224 px weights, "
                "run at a smaller size)")


def zoo_names() -> list[str]:
    return list(_ZOO)


def close_zoo_name(name: str) -> str:
    """' (did you mean 'crepe-tiny'? ...)' for a misspelt zoo name, '' when nothing is close: a
    look-alike ('crepe-tiyn'), or, for a name that is no path, one of the same family ('crepe-small')."""
    import difflib
    close = difflib.get_close_matches(name.lower(), zoo_names(), n=1, cutoff=0.6)
    family = name.lower().replace("_", "-").split("-")[0]
    if not close and not any(c in name for c in "./\\"):
        close = [zoo for zoo in zoo_names() if zoo.split("-")[0] == family][:1]
    return f" (did you mean {close[0]!r}? `bbreprog models` describes the models)" if close else ""


def zoo_model(name: str) -> ZooModel:
    if name not in _ZOO:
        raise Refusal(f"unknown model {name!r}; expected one of: {', '.join(_ZOO)} "
                      f"(`bbreprog models` describes them)")
    return _ZOO[name]


def describe(name: str) -> dict:
    """What ``bbreprog models`` shows of a zoo model: its card, where its weights come from and
    what it takes on disk (the ONNX file is built on first use), read without building anything."""
    from . import build
    card = zoo_model(name)
    arch, _ = build.ARCHITECTURES[name]
    try:
        weights = arch.weights_path()
    except Refusal:                     # the package carrying the weights is not installed
        weights = None
    onnx = build.onnx_path(name)
    return {**dataclasses.asdict(card), "source": build.SOURCES[name],
            "weights": str(weights) if weights else None,
            "weights_bytes": weights.stat().st_size if weights and weights.is_file() else None,
            "onnx": str(onnx), "onnx_bytes": onnx.stat().st_size if onnx.is_file() else None}


def model_path(name: str) -> Path:
    """The verified ONNX file for ``name``: reused when its sha256 matches the sidecar,
    otherwise (missing or tampered) rebuilt from the installed weights."""
    from . import build
    return build.cached_or_build(zoo_model(name))


def torch_model(name: str) -> torch.nn.Module:
    """The torch model in eval mode, weights loaded with weights_only=True after a checksum."""
    from . import build
    zoo_model(name)
    return build.load_torch(name)


def build_all() -> list[Path]:
    """Build (or reuse) every zoo model; used by the installer."""
    return [model_path(name) for name in zoo_names()]
