"""A learned program: the transform, θ, the fitted label map and the classes, saved as one
``program.pt`` that rebuilds alone — no training data, no backend, no config needed.

``Program.load(folder)`` is what report and export read; ``load_program(folder)`` connects it
to the model it was trained against (the run's config.toml says where that is) to evaluate
and predict, through the one query path training uses (``querying``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..backends.base import Backend
from ..components import Section
from .config import RunConfig, load_run_config
from ..errors import Refusal
from ..program.label_maps import LABEL_MAPS, LabelMap, target_accuracy
from ..backends.ledger import Ledger
from ..program.querying import CHUNK, examples_log_probs
from ..program.transforms import TRANSFORMS, Transform

#: program.pt's layout. 3: the components' kinds and parameters and the seed (loads alone);
#: 2 (0.2): the target shape and the model's spec (needs config.toml); 1 (0.1): θ, map, classes
#: (needs config.toml and result.json)
PROGRAM_FORMAT = 3


def build_parts(transform: Section, label_map: Section, seed: int, model: dict,
                target_shape: tuple[int, ...], num_target: int) -> tuple[Transform, LabelMap]:
    """The transform and the (unfitted) label map the sections describe, for a model described
    by ``model`` (``Backend.describe()``: input_shape, value_range, num_classes) and targets of
    ``target_shape`` in ``num_target`` classes. Nothing is queried."""
    built = TRANSFORMS.build(transform, tuple(target_shape), tuple(model["input_shape"]),
                             tuple(model["value_range"]), seed=seed)
    return built, LABEL_MAPS.build(label_map, int(model["num_classes"]), int(num_target), seed=seed)


@dataclass
class Program:
    transform: Transform
    label_map: LabelMap
    theta: torch.Tensor                  # (d,)
    classes: list[str]
    model: dict                          # the model it was trained against, as Backend.describe() said
    config: RunConfig | None = None      # the run's config, when its folder has one
    backend: Backend | None = field(default=None, repr=False)
    chunk: int = CHUNK

    # ---- saving and loading ----------------------------------------------------------------
    def state(self, seed: int) -> dict:
        """program.pt's content: plain tensors and containers (loads with weights_only)."""
        return {"format": PROGRAM_FORMAT, "theta": self.theta, "label_map": self.label_map.state_dict(),
                "classes": list(self.classes), "target_shape": list(self.transform.target_shape),
                "model": self.model, "seed": seed,
                "components": {"transform": self.config.transform.as_dict(),
                               "label_map": self.config.label_map.as_dict()}}

    @classmethod
    def load(cls, run_dir: str | Path) -> "Program":
        """The program saved in ``run_dir``, built without a backend."""
        run_dir = Path(run_dir)
        if not (run_dir / "program.pt").is_file():
            raise Refusal(f"expected a finished run folder with program.pt, got {run_dir}")
        try:
            saved = torch.load(run_dir / "program.pt", map_location="cpu", weights_only=True)
            saved["theta"], saved["label_map"], saved["classes"]
        except Exception as error:
            raise Refusal(f"expected a readable program.pt in {run_dir}, got one that fails to load "
                          f"({type(error).__name__})") from None
        config = load_run_config(run_dir) if (run_dir / "config.toml").is_file() else None
        if saved.get("format", 1) >= 3:
            parts = saved["components"]
            transform = TRANSFORMS.section_of(parts["transform"]["kind"], _params(parts["transform"]), strict=False)
            label_map = LABEL_MAPS.section_of(parts["label_map"]["kind"], _params(parts["label_map"]), strict=False)
            seed = int(saved["seed"])
        elif config is None:
            raise Refusal(f"expected config.toml beside {run_dir / 'program.pt'}, written by blackbox-reprog 0.2 or "
                          "earlier, got none")
        else:
            transform, label_map, seed = config.transform, config.label_map, config.seed
        target_shape = _target_shape(saved, config, run_dir)
        model = saved.get("model") or _model_from_result(run_dir)
        built_transform, built_map = build_parts(transform, label_map, seed, model, target_shape,
                                                 len(saved["classes"]))
        built_map.load_state_dict(saved["label_map"])
        return cls(built_transform, built_map, saved["theta"], list(saved["classes"]), model, config)

    def connected(self, backend: Backend) -> "Program":
        return replace(self, backend=backend)

    # ---- querying ----------------------------------------------------------------------------
    def target_logits(self, x: np.ndarray, ledger: Ledger, purpose: str) -> torch.Tensor:
        """(N, ...) targets → (N, K) target-class logits, in calls of at most ``chunk``."""
        return self.label_map(self.source_log_probs(x, ledger, purpose))

    def source_log_probs(self, x: np.ndarray, ledger: Ledger, purpose: str) -> torch.Tensor:
        """(N, ...) targets → (N, C) the model's log-probabilities at θ, in calls of at most ``chunk``."""
        return examples_log_probs(self.transform, self.theta, x, ledger, purpose, self.chunk)

    def evaluate(self, data_name: str | None = None) -> dict:
        if self.config is None and data_name is None:
            raise Refusal("expected --data naming a dataset, got none and no config.toml naming the run's")
        config = self.config or RunConfig()
        splits = config.data.splits(config.seed, data_name)
        self.check_targets(splits.test.x)
        ledger = Ledger(self.backend, None)
        logits = self.target_logits(splits.test.x, ledger, "test")
        return {"data": data_name or config.data.name, "examples": len(splits.test),
                "test_accuracy": target_accuracy(logits, torch.as_tensor(splits.test.y)),
                "queries": ledger.summary()["test"]["queries"]}

    def check_targets(self, x: np.ndarray) -> None:
        """The whole input, before the first chunk is bought."""
        if tuple(x.shape[1:]) != self.transform.target_shape:
            raise Refusal(f"expected target examples of shape {self.transform.target_shape}, "
                          f"got {tuple(x.shape[1:])}")
        if x.dtype.kind not in "biuf":
            raise Refusal(f"expected real-valued target examples, got dtype {x.dtype}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
            raise Refusal(f"expected finite target examples, got NaN or infinity in example {bad + 1}")


def load_program(run_dir: str | Path, backend: Backend | None = None) -> Program:
    """The run's program connected to the model it was trained against (built from the run's
    config.toml, degraded as in training), or to ``backend``."""
    from ..backends.degrade import degrade
    from ..backends.registry import create_backend
    from .runner import backend_name, backend_options
    program = Program.load(run_dir)
    if backend is None:
        config = program.config
        if config is None:
            raise Refusal(f"expected config.toml in {run_dir} naming the model to query, got none")
        backend = create_backend(backend_name(config), config.backend.model, **backend_options(config))
        backend = degrade(backend, config.backend.output, config.backend.k)
    return program.connected(backend)


def _params(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "kind"}


def _model_from_result(run_dir: Path) -> dict:
    """The model's spec for a program.pt of format 1, which did not record it: result.json has it."""
    try:
        return json.loads((run_dir / "result.json").read_text())["backend"]
    except (OSError, ValueError, KeyError):
        raise Refusal(f"expected result.json describing the model beside {run_dir / 'program.pt'}, written by "
                      "blackbox-reprog 0.1, got none readable (train again to write a program that loads alone)"
                      ) from None


def _target_shape(saved: dict, config: RunConfig | None, run_dir: Path) -> tuple[int, ...]:
    """The shape of one target example: recorded in program.pt since its format 2; a run
    written before (blackbox-reprog 0.1) learns it from its training data, if still there."""
    if "target_shape" in saved:
        return tuple(int(s) for s in saved["target_shape"])
    try:
        splits = config.data.splits(config.seed)
    except Refusal:
        raise Refusal(f"expected the training data {config.data.name} of {run_dir}, whose program.pt was written "
                      "by blackbox-reprog 0.1 and does not record its target shape, got none readable "
                      "(train again to write a program that loads alone)") from None
    return tuple(splits.train.x.shape[1:])
