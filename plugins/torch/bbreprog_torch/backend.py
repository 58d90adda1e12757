"""PyTorch models as backends. Unlike every other backend this one also offers gradients: a
``DifferentiableBackend``, whose ``forward_tensor`` the white-box reference path trains through.
It serves the zoo's models by name too, so it stands in for a zoo model configured through ONNX
when a run asks for gradients.

Weights are only ever read with ``torch.load(..., weights_only=True)`` (inside the zoo); a
user's own model comes in as an ``nn.Module`` object or a "module:factory" that returns one.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import os
import sys

import numpy as np
import torch

from blackbox_reprog.backends.base import (Capabilities, DifferentiableBackend, InputSpec, Prediction,
                                     checked_max_batch)
from blackbox_reprog.errors import Refusal


def _module_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_factory(model: str) -> torch.nn.Module:
    module_name, _, attribute = model.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise Refusal(f"expected an importable model factory {model!r}, got {type(error).__name__}: {error}") from None
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise Refusal(f"expected {model!r} to return a torch.nn.Module, got {type(module).__name__}")
    return module


class TorchBackend(DifferentiableBackend):
    """PyTorch model (zoo name, nn.Module or "module:factory"; cpu or cuda; gradients for white-box)."""

    name = "torch"
    capabilities = Capabilities(differentiable=True, zoo_models=True)

    def __init__(self, model, *, device: str = "cpu", max_batch: int | None = None,
                 input_shape=None, num_classes: int | None = None,
                 value_range=None, output_kind: str = "logits"):
        from blackbox_reprog import zoo

        if device == "cuda" and not torch.cuda.is_available():
            raise Refusal("expected a CUDA device for device 'cuda', got none (torch.cuda.is_available() is False)")
        if device not in ("cpu", "cuda"):
            raise Refusal(f"expected device 'cpu' or 'cuda', got {device!r}")
        if output_kind not in ("logits", "probs"):
            raise Refusal(f"expected output_kind logits or probs, got {output_kind!r}")
        label = model if isinstance(model, str) else type(model).__name__
        if isinstance(model, str) and model in zoo.zoo_names():
            card = zoo.zoo_model(model)
            module = zoo.torch_model(model)
            input_shape, num_classes = card.input_shape, card.num_classes
            value_range = value_range or card.value_range
        elif isinstance(model, str) and zoo.close_zoo_name(model):
            raise Refusal(f"expected a zoo name ({', '.join(zoo.zoo_names())}) or a \"module:factory\", got "
                          f"{model!r}{zoo.close_zoo_name(model)}")
        else:
            module = model if isinstance(model, torch.nn.Module) else _load_factory(str(model))
            if input_shape is None or num_classes is None:
                raise Refusal(f"expected input_shape and num_classes for the model {label!r}, got "
                              f"input_shape={input_shape}, num_classes={num_classes}")
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)        # frozen: gradients flow to the program only
        self.input_spec = InputSpec(tuple(int(s) for s in input_shape), "float32",
                                    tuple(value_range) if value_range else (-math.inf, math.inf))
        self.num_classes, self.output_kind = int(num_classes), output_kind
        self.max_batch = checked_max_batch(max_batch, self.input_spec.shape, self.device.type)
        self.model_id = f"torch:{label}:sha256:{_module_digest(self.module)}"

    def forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_shape) → (B, C) scores, differentiable with respect to x."""
        return self.module(x.to(self.device)).to(x.device)

    def _predict(self, x: np.ndarray) -> Prediction:
        with torch.no_grad():
            scores = self.module(torch.from_numpy(x).to(self.device)).cpu().numpy()  # (b, C)
        return Prediction(self.output_kind, self.num_classes, scores=scores.astype(np.float32))

    def describe(self) -> dict:
        return {**super().describe(), "device": str(self.device)}
