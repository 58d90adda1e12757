"""A finished run's learned program, reloaded from its folder to evaluate or predict."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as data_module
from .backend import Backend
from .config import RunConfig, load_config
from .errors import Refusal
from .label_maps import LabelMap, target_accuracy
from .ledger import Ledger
from .querying import CHUNK, examples_log_probs
from .registry import create_backend
from .transforms import Transform


@dataclass
class Program:
    config: RunConfig
    backend: Backend
    transform: Transform
    label_map: LabelMap
    theta: torch.Tensor
    classes: list[str]
    chunk: int = CHUNK

    def target_logits(self, x: np.ndarray, ledger: Ledger, purpose: str) -> torch.Tensor:
        """(N, ...) targets → (N, K) target-class logits, in calls of at most ``chunk``."""
        return self.label_map(self.source_log_probs(x, ledger, purpose))

    def source_log_probs(self, x: np.ndarray, ledger: Ledger, purpose: str) -> torch.Tensor:
        """(N, ...) targets → (N, C) the model's log-probabilities at θ, in calls of at most ``chunk``."""
        return examples_log_probs(self.transform, self.theta, x, ledger, purpose, self.chunk)

    def evaluate(self, data_name: str | None = None) -> dict:
        splits = data_module.make_splits(data_name or self.config.data.name,
                                         validation_fraction=self.config.data.validation_fraction,
                                         test_fraction=self.config.data.test_fraction, seed=self.config.seed)
        self.check_targets(splits.test.x)
        ledger = Ledger(self.backend, None)
        logits = self.target_logits(splits.test.x, ledger, "test")
        return {"data": data_name or self.config.data.name, "examples": len(splits.test),
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
            raise Refusal(f"expected finite target examples, got NaN or infinity in example {bad}")


def load_program(run_dir: str | Path, backend: Backend | None = None) -> Program:
    """The run's program around its backend, rebuilt from program.pt and config.toml alone (the
    training data may be gone), or around ``backend``, e.g. a stand-in that only declares the
    model's spec, when nothing is to be queried."""
    from .degrade import degrade
    from .runner import backend_name, backend_options, build_program
    run_dir = Path(run_dir)
    if not (run_dir / "program.pt").is_file():
        raise Refusal(f"expected a finished run folder with program.pt, got {run_dir}")
    config = load_config(run_dir / "config.toml")
    try:
        saved = torch.load(run_dir / "program.pt", map_location="cpu", weights_only=True)
        saved["theta"], saved["label_map"], saved["classes"]
    except Exception as error:
        raise Refusal(f"expected a readable program.pt in {run_dir}, got one that fails to load "
                      f"({type(error).__name__})") from None
    target_shape = _target_shape(saved, config, run_dir)     # before a backend is built: nothing to close
    if backend is None:
        backend = create_backend(backend_name(config), config.backend.model, **backend_options(config))
        backend = degrade(backend, config.backend.output, config.backend.k)
    try:
        transform, label_map = build_program(config, backend, target_shape, len(saved["classes"]))
        label_map.load_state_dict(saved["label_map"])
    except BaseException:
        backend.close()
        raise
    return Program(config, backend, transform, label_map, saved["theta"], list(saved["classes"]))


def _target_shape(saved: dict, config: RunConfig, run_dir: Path) -> tuple[int, ...]:
    """The shape of one target example: recorded in program.pt since its format 2; a run
    written before (blackbox-reprog 0.1) learns it from its training data, if still there."""
    if "target_shape" in saved:
        return tuple(int(s) for s in saved["target_shape"])
    try:
        splits = data_module.make_splits(config.data.name, validation_fraction=config.data.validation_fraction,
                                         test_fraction=config.data.test_fraction, seed=config.seed)
    except Refusal:
        raise Refusal(f"expected the training data {config.data.name} of {run_dir}, whose program.pt was written "
                      "by blackbox-reprog 0.1 and does not record its target shape, got none readable "
                      "(train again to write a program that loads alone)") from None
    return tuple(splits.train.x.shape[1:])

