"""From a RunConfig to a finished run folder.

Builds every component from the config (refusing bad input before any query), runs the
Trainer, and writes the run folder: ``config.toml``, ``metrics.jsonl``, ``checkpoint.pt``,
``result.json`` and ``accuracy.png``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import data as data_module
from .backend import Backend
from .config import ConfigError, RunConfig, to_toml
from .estimators import make_estimator
from .label_maps import make_label_map
from .losses import make_loss
from .registry import create_backend
from .step_rules import make_optimizer, make_schedule
from .trainer import Trainer, TrainingResult
from .transforms import make_transform


@dataclass
class Components:
    backend: Backend
    splits: data_module.Splits
    trainer: Trainer


def build(config: RunConfig, *, backend: Backend | None = None,
          on_step: Callable | None = None, on_checkpoint: Callable | None = None) -> Components:
    """Every component of a run, checked against each other; no query is spent here."""
    if config.train.method != "blackbox":
        raise ConfigError(f"expected train.method 'blackbox', got {config.train.method!r}")
    splits = data_module.make_splits(config.data.name, validation_fraction=config.data.validation_fraction,
                                     test_fraction=config.data.test_fraction, seed=config.seed)
    if backend is None:
        backend = create_backend(config.backend.name, config.backend.model, **config.backend.options)
    transform, label_map = build_program(config, backend, splits.train)
    counts = np.bincount(splits.train.y, minlength=splits.train.num_classes)
    loss = make_loss(config.loss.kind, gamma=config.loss.gamma, class_counts=counts)
    e = config.estimator
    estimator = make_estimator(e.kind, transform.num_params, directions=e.directions,
                               smoothing=e.smoothing, distribution=e.distribution)
    o, tr = config.optimizer, config.train
    batch = min(tr.batch_size, len(splits.train))
    expected_steps = tr.max_steps or max(config.budget // (estimator.population * batch), 1)

    def make_step_rule(params):
        rule = make_optimizer(o.kind, params, lr=o.lr, momentum=o.momentum)
        return rule, make_schedule(o.schedule, rule, total_steps=expected_steps, decay=o.decay,
                                   offset=o.offset, power=o.power)

    trainer = Trainer(backend=backend, transform=transform, label_map=label_map, loss=loss,
                      estimator=estimator, make_step_rule=make_step_rule, train=splits.train,
                      validation=splits.validation, test=splits.test, budget=config.budget,
                      batch_size=tr.batch_size, max_steps=tr.max_steps, eval_every=tr.eval_every,
                      seed=config.seed, on_step=on_step, on_checkpoint=on_checkpoint,
                      checkpoint_every=tr.checkpoint_every)
    return Components(backend, splits, trainer)


def build_program(config: RunConfig, backend: Backend, train: data_module.Dataset):
    """The transform and the (unfitted) label map a config describes, for this backend and data."""
    spec, t, m = backend.input_spec, config.transform, config.label_map
    options = {"signal": {"grid": t.grid, "scale": t.scale},
               "frame": {"grid": t.grid, "inner": t.inner},
               "additive": {"grid": t.grid, "epsilon": t.epsilon}}.get(t.kind, {})
    transform = make_transform(t.kind, train.x.shape[1:], spec.shape, spec.value_range, **options)
    label_map = make_label_map(m.kind, backend.num_classes, train.num_classes,
                               per_class=m.per_class, seed=config.seed, l2=m.l2, refit=m.refit)
    return transform, label_map


def new_run_dir(config: RunConfig) -> Path:
    """A fresh folder under ``config.out``; an existing name gets a numeric suffix."""
    base = config.name or f"{Path(config.data.name).stem}-{config.train.method}-s{config.seed}"
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"expected a free run folder name under {root}, found none")


def atomic_write(path: Path, payload: bytes) -> None:
    """Temp file in the same folder, fsync, replace, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(path: Path, state: dict) -> None:
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def result_dict(config: RunConfig, components: Components, result: TrainingResult) -> dict:
    test = components.splits.test
    counts = np.bincount(test.y, minlength=test.num_classes)
    return {
        "test_accuracy": result.test_accuracy,
        "start_accuracy": result.start_accuracy,
        "chance_accuracy": float(counts.max() / counts.sum()),   # always guessing the majority class
        "uniform_chance": 1.0 / test.num_classes,
        "best_validation_accuracy": result.best_validation_accuracy,
        "best_validation_loss": result.best_validation_loss,
        "best_step": result.best_step,
        "steps": result.steps,
        "queries": {purpose: v["queries"] for purpose, v in result.ledger.items()
                    if isinstance(v, dict)},
        "calls": result.ledger["total"]["calls"],
        "budget": config.budget,
        "budgeted_queries": result.ledger["budgeted"],
        "seed": config.seed,
        "wall_seconds": round(result.wall_seconds, 2),
        "method": config.train.method,
        "backend": components.backend.describe(),
        "data": {"name": config.data.name, "train": len(components.splits.train),
                 "validation": len(components.splits.validation), "test": len(test),
                 "classes": test.num_classes},
        "program": {**components.trainer.transform.describe()},
        "label_map": config.label_map.kind,
        "estimator": {"kind": config.estimator.kind, "population": components.trainer.estimator.population},
    }


class Run:
    """A run with every component built and checked, nothing spent yet; ``execute`` trains
    and writes the run folder. Splitting the two lets the CLI tell a refusal (nothing spent)
    from a failure while running."""

    def __init__(self, config: RunConfig, *, backend: Backend | None = None,
                 progress: Callable[[dict], None] | None = None):
        self.config, self.progress = config, progress
        self.run_dir: Path | None = None
        self._metrics = None
        self.components = build(config, backend=backend, on_step=self._on_step,
                                on_checkpoint=self._on_checkpoint)

    def _on_step(self, row: dict) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.progress:
            self.progress(row)

    def _on_checkpoint(self, state: dict) -> None:
        save_checkpoint(self.run_dir / "checkpoint.pt", state)

    def execute(self, run_dir: Path | None = None) -> tuple[Path, dict]:
        components = self.components
        self.run_dir = run_dir or new_run_dir(self.config)
        atomic_write(self.run_dir / "config.toml", to_toml(self.config).encode())
        try:
            with open(self.run_dir / "metrics.jsonl", "w") as self._metrics:
                result = components.trainer.fit()
        finally:
            components.backend.close()
        save_checkpoint(self.run_dir / "program.pt", {
            "theta": result.theta, "label_map": result.label_map.state_dict(),
            "classes": list(components.splits.train.classes)})
        summary = result_dict(self.config, components, result)
        atomic_write(self.run_dir / "result.json", (json.dumps(summary, indent=2) + "\n").encode())
        from .plot import plot_run
        plot_run(self.run_dir, summary, result.history)
        return self.run_dir, summary


def run(config: RunConfig, *, run_dir: Path | None = None, backend: Backend | None = None,
        progress: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    """Build, train, write the run folder. Returns (run folder, result dict)."""
    return Run(config, backend=backend, progress=progress).execute(run_dir)
