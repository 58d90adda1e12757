"""From a RunConfig to a finished run folder.

Builds every component from the config (refusing bad input before any query), runs the
Trainer, and writes the run folder: ``config.toml``, ``metrics.jsonl``, ``checkpoint.pt``,
``result.json`` and ``accuracy.png`` (``INTERRUPTED`` while a run stopped by Ctrl-C awaits its
resume). ``plan`` says what a config would spend, sending nothing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import data as data_module
from ..backends.base import Backend, InputSpec
from .config import ConfigError, RunConfig, to_toml, with_absolute_paths
from ..backends.degrade import degrade
from ..files import atomic_write
from .answers import AnswerStore
from .journal import ANSWERS, JOURNAL, Journal, JournalError, Recorder
from ..program.losses import LOSSES
from .program import Program, build_parts
from ..backends.registry import create_backend, declared
from ..search.strategies import SEARCHES
from .trainer import Trainer, TrainingResult

#: the file a run stopped by Ctrl-C (KeyboardInterrupt) leaves in its folder until it is resumed
INTERRUPTED = "INTERRUPTED"


@dataclass
class Components:
    backend: Backend
    splits: data_module.Splits
    trainer: Trainer


def build(config: RunConfig, *, backend: Backend | None = None, on_step: Callable | None = None,
          on_checkpoint: Callable | None = None, on_test: Callable | None = None) -> Components:
    """Every component of a run, checked against each other; no query is spent here."""
    splits = config.data.splits(config.seed)
    if backend is None:
        backend = create_backend(backend_name(config), config.backend.model, **backend_options(config))
    backend = degrade(backend, config.backend.output, config.backend.k)
    transform, label_map = build_parts(config.transform, config.label_map, config.seed, backend.describe(),
                                       splits.train.x.shape[1:], splits.train.num_classes)
    if label_map.needs_scores and backend.output_kind == "label":
        raise ConfigError(f"expected scores (logits, probs or topk) for label_map.kind {config.label_map.kind!r}, "
                          "got a backend answering labels only")
    counts = np.bincount(splits.train.y, minlength=splits.train.num_classes)
    loss = LOSSES.build(config.loss, class_counts=counts)
    trainer = Trainer(backend=backend, transform=transform, label_map=label_map, loss=loss,
                      make_search=SEARCHES.cls(config.train.method).plan(config, backend, transform),
                      train=splits.train, validation=splits.validation, test=splits.test,
                      budget=config.budget, batch_size=config.train.batch_size,
                      max_steps=config.train.max_steps, eval_every=config.train.eval_every,
                      seed=config.seed, patience=config.train.patience,
                      on_step=on_step, on_checkpoint=on_checkpoint,
                      checkpoint_every=config.train.checkpoint_every, on_test=on_test)
    return Components(backend, splits, trainer)


def backend_name(config: RunConfig) -> str:
    """The white-box path needs gradients: a zoo model asked for through a backend without them
    (onnx) is served by an installed backend that declares both (torch), found by the registry
    from the plugins' capabilities — the same network from the same weights."""
    from .. import zoo
    from ..backends.registry import zoo_backend_with_gradients
    if config.train.method == "whitebox" and config.backend.model in zoo.zoo_names():
        return zoo_backend_with_gradients(config.backend.name)
    return config.backend.name


def backend_options(config: RunConfig) -> dict:
    """The config's backend options; when another backend stands in (torch for onnx), only the
    options both local backends share (device, max_batch) carry over."""
    if backend_name(config) != config.backend.name:
        return {k: v for k, v in config.backend.options.items() if k in ("device", "max_batch")}
    return dict(config.backend.options)


class SpecOnly(Backend):
    """A remote model as its config describes it (``backend.options``), for a plan: a dry run
    must not contact an endpoint (building the http backend checks its health), and nothing
    in a plan is sent."""

    def __init__(self, name: str, *, input_shape=(), num_classes: int = 0, output_kind: str = "probs",
                 value_range=(-float("inf"), float("inf")), dtype: str = "float32", **ignored):
        if not input_shape or not num_classes:
            raise ConfigError("expected backend.options input_shape and num_classes to plan a run on a remote "
                              f"backend without contacting it, got input_shape {list(input_shape) or 'none'} and "
                              f"num_classes {num_classes or 'none'}")
        self.name, self.model_id = name, f"{name} (not contacted)"
        self.input_spec = InputSpec(tuple(int(n) for n in input_shape), dtype, tuple(float(v) for v in value_range))
        self.num_classes, self.output_kind = int(num_classes), output_kind
        self.capabilities = declared(name)

    def _predict(self, x):
        raise RuntimeError("a plan sends nothing")


def plan(config: RunConfig, *, backend: Backend | None = None) -> dict:
    """What ``config`` would spend, per purpose (``Trainer.plan``), with every component built
    and checked as for the run itself, and nothing sent; a remote backend is not contacted
    (``SpecOnly`` stands in for it). With ``train.compare_with``, the compared run's plan too."""
    capabilities = declared(backend_name(config)) if backend is None else None
    remote = capabilities is not None and capabilities.remote
    if remote:
        backend = SpecOnly(backend_name(config), **backend_options(config))
    components = build(config, backend=backend)
    components.backend.close()
    model = "endpoint, not contacted" if remote else Path(config.backend.model).name
    planned = {**components.trainer.plan(), "model": f"{backend_name(config)} {model}",
               "method": config.train.method, "data": Path(config.data.name).name}
    if config.train.compare_with:
        planned["comparison"] = plan(comparison_config(config, planned["steps"]))
    return planned


def run_dir_name(config: RunConfig) -> str:
    """The run folder's name before a suffix: ``name``, or <data>-<method>-s<seed>."""
    return config.name or f"{Path(config.data.name).stem}-{config.train.method}-s{config.seed}"


def interrupted(run_dir: Path) -> dict | None:
    """What ``INTERRUPTED`` in ``run_dir`` says (``step``, ``queries``, ``resume``), None when
    the folder holds no interrupted run ({} for a marker that cannot be read)."""
    path = Path(run_dir) / INTERRUPTED
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def mark_interrupted(run_dir: Path, step: int, queries: int) -> None:
    """Ctrl-C: the folder says that its run was interrupted, where, and how to continue it
    (``result.json`` stays unwritten: the run did not finish)."""
    marker = {"step": step, "queries": queries, "resume": f"bbreprog resume {run_dir}"}
    atomic_write(Path(run_dir) / INTERRUPTED, (json.dumps(marker) + "\n").encode())


def new_run_dir(config: RunConfig) -> Path:
    """A fresh folder under ``config.out``; an existing name gets a numeric suffix."""
    base = run_dir_name(config)
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


def save_checkpoint(path: Path, state: dict) -> None:
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def result_dict(config: RunConfig, components: Components, result: TrainingResult) -> dict:
    test = components.splits.test
    counts = np.bincount(test.y, minlength=test.num_classes)
    confusion = np.array(result.test_confusion)                         # (K, K): row true, column predicted
    examples = confusion.sum(axis=1)                                     # (K,) test examples per class
    return {
        "test_accuracy": result.test_accuracy,
        "start_accuracy": result.start_accuracy,
        "chance_accuracy": float(counts.max() / counts.sum()),   # always guessing the majority class
        "uniform_chance": 1.0 / test.num_classes,
        "best_validation_accuracy": result.best_validation_accuracy,
        "best_validation_loss": result.best_validation_loss,
        "best_step": result.best_step,
        "start_validation_loss": result.start_validation.get("loss"),      # the zero program, step 0
        "start_validation_accuracy": result.start_validation.get("accuracy"),
        "steps": result.steps,
        "stopped": result.stopped,
        "queries": {purpose: v["queries"] for purpose, v in result.ledger.items()
                    if isinstance(v, dict)},
        "retried_queries": result.ledger["total"]["retried"],   # sent again after a failure; maybe billed
        "ledger": result.ledger,                                  # per purpose: queries, stored, retried, calls
        "calls": result.ledger["total"]["calls"],
        "budget": config.budget,
        "budgeted_queries": result.ledger["budgeted"],
        "unspent": config.budget - result.ledger["budgeted"],    # never sent, never billed (early stop, leftovers)
        "seed": config.seed,
        "wall_seconds": round(result.wall_seconds, 2),
        "method": config.train.method,
        "backend": components.backend.describe(),
        "data": {"name": config.data.name, "train": len(components.splits.train),
                 "validation": len(components.splits.validation), "test": len(test),
                 "classes": test.num_classes},
        "program": {**components.trainer.transform.describe()},
        "label_map": config.label_map.kind,
        "search": components.trainer.search.describe(),
        # the chosen program's final test pass, for a confusion matrix (no query of its own)
        "classes": [str(c) for c in components.splits.train.classes],
        "test_confusion": result.test_confusion,
        "test_per_class_accuracy": [float(confusion[k, k] / n) if n else None for k, n in enumerate(examples)],
    }


def billing(ledger: dict, journal: dict | None) -> dict:
    """What a server's bill for this run should read, across every process of it (test pass
    included): each example that left this machine is possibly billed once per attempt.

    ``possibly_billed`` = queries + retried − read_back_not_bought, split by who sent what. With
    an API that honours idempotency keys, a call a killed process left in flight and this one
    sent again is billed once: it is counted once here too."""
    total = ledger["total"]
    by_origin = journal["answers_from_store_by_origin"] if journal else {}
    bought_earlier = by_origin.get("bought_by_earlier_processes", 0)
    earlier_attempts = journal["earlier_attempts_booked"]["queries"] if journal else 0
    not_bought = total["stored"] - bought_earlier
    return {
        "sent_by_this_process": total["queries"] - total["stored"],              # first attempts
        "retried_by_this_process": total["retried"] - earlier_attempts,
        "bought_by_earlier_processes": bought_earlier,       # answers read back, billed to them
        "earlier_attempts": earlier_attempts,                # their retries and calls lost in flight
        "read_back_not_bought": not_bought,                  # repeats, another run's answers
        "possibly_billed": total["queries"] + total["retried"] - not_bought,
    }


class Run:
    """A run with every component built and checked, nothing spent yet; ``execute`` trains
    and writes the run folder. Splitting the two lets the CLI tell a refusal (nothing spent)
    from a failure while running."""

    def __init__(self, config: RunConfig, *, backend: Backend | None = None,
                 progress: Callable[[dict], None] | None = None,
                 test_progress: Callable[[int, int], None] | None = None):
        self.config, self.progress = config, progress
        self.run_dir: Path | None = None
        self._metrics = None
        self.last_row: dict = {}                  # the latest metrics row: where an interruption stopped
        self.components = build(config, backend=backend, on_step=self._on_step,
                                on_checkpoint=self._on_checkpoint, on_test=test_progress)
        if config.train.compare_with:             # refuse a comparison that cannot run, now
            build(comparison_config(config, 1)).backend.close()

    def _on_step(self, row: dict) -> None:
        self.last_row = row
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.progress:
            self.progress(row)

    def _on_checkpoint(self, state: dict) -> None:
        saved = self._replaying
        if saved is not None and state["step"] <= saved["step"]:
            # replaying an interrupted run: it must pass through the state it had saved
            if state["step"] == saved["step"] and not torch.equal(state["theta"], saved["theta"]):
                raise JournalError(f"expected the replay to reach the checkpoint's θ at step {saved['step']}, got "
                                   "another θ: the model's answers or the code changed since the run began")
            return
        save_checkpoint(self.run_dir / "checkpoint.pt", state)

    def _saved_checkpoint(self) -> dict | None:
        """The interrupted run's checkpoint, read without unpickling anything but tensors and
        plain containers; a damaged or hostile file is one sentence (the CLI's exit code 2)."""
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            saved["step"], saved["theta"]          # a checkpoint without them is damaged too
        except Exception as error:
            raise JournalError(f"expected a readable checkpoint.pt in {self.run_dir}, got one that fails to "
                               f"load ({type(error).__name__})") from None
        return saved

    def _recorder(self):
        """The journal and the answer store, when the config (or a remote backend) asks for them."""
        mode, backend = self.config.train.journal, self.components.backend
        if mode == "off" or (mode == "auto" and not backend.capabilities.remote):
            return None
        store = Path(self.config.train.answer_store).expanduser() if self.config.train.answer_store else self.run_dir / ANSWERS
        answers = AnswerStore(store)                  # before the journal: nothing to close if it fails
        return Recorder(backend, Journal(self.run_dir / JOURNAL), answers)

    def execute(self, run_dir: Path | None = None, *, resume: bool = False, plot: bool = True) -> tuple[Path, dict]:
        """Train and write the run folder. ``resume``: ``run_dir`` holds an interrupted run of
        this config; it is replayed from the start with the same seed, every answer already
        paid for read back from the answer store, and continues where it stopped."""
        self.run_dir = run_dir or new_run_dir(self.config)
        self.finished = False
        if not resume:
            self.config = with_absolute_paths(self.config)
            atomic_write(self.run_dir / "config.toml", to_toml(self.config).encode())
        try:
            return self._train_and_write(resume, plot)
        except KeyboardInterrupt:                 # Ctrl-C: unless the run had finished, say so in its folder
            if not self.finished:
                mark_interrupted(self.run_dir, self.last_row.get("step", 0), self.components.trainer.ledger.spent)
            raise

    def _train_and_write(self, resume: bool, plot: bool) -> tuple[Path, dict]:
        components = self.components
        try:                                      # refused here: nothing was sent
            self._replaying = self._saved_checkpoint() if resume else None   # before the journal is opened
            recorder = self._recorder()
        except BaseException:
            components.backend.close()
            raise
        if recorder is not None:
            components.trainer.ledger.record_with(recorder)
        try:
            with open(self.run_dir / "metrics.jsonl", "w") as self._metrics:
                result = components.trainer.fit()
        finally:
            if recorder is not None:
                recorder.close()
            components.backend.close()
        save_checkpoint(self.run_dir / "program.pt", program_state(self.config, components, result))
        summary = result_dict(self.config, components, result)
        if recorder is not None:
            summary["journal"] = recorder.summary(result.ledger)
        summary["billing"] = billing(result.ledger, summary.get("journal"))
        if self.config.train.compare_with:
            # this run's result is written before the comparison runs: a kill during it keeps
            # the paid-for program's accuracy and ledger; `bbreprog resume` finishes the comparison
            method = self.config.train.compare_with
            summary["comparison_pending"] = {"method": method, "run_dir": f"compare-{method}"}
            write_result(self.run_dir, summary)
            summary = finish_comparison(self.config, self.run_dir, summary)
        else:
            write_result(self.run_dir, summary)
            (self.run_dir / INTERRUPTED).unlink(missing_ok=True)         # resumed and finished
        self.finished = True
        if plot:
            from .plot import plot_run
            plot_run(self.run_dir, summary, result.history)
        return self.run_dir, summary


def program_state(config: RunConfig, components: Components, result: TrainingResult) -> dict:
    """program.pt: everything the finished program is, enough to rebuild it alone."""
    program = Program(components.trainer.transform, result.label_map, result.theta,
                      list(components.splits.train.classes), components.backend.describe(), config)
    state = program.state(config.seed)
    if result.validation_scores is not None:      # what predict calibrates its probabilities on (no query)
        state["calibration"] = {"scores": result.validation_scores.float(),
                                "labels": torch.as_tensor(components.splits.validation.y, dtype=torch.int64)}
    return state


def write_result(run_dir: Path, summary: dict) -> None:
    atomic_write(run_dir / "result.json", (json.dumps(summary, indent=2) + "\n").encode())


def comparison_config(config: RunConfig, steps: int) -> RunConfig:
    """The same config and seed with the other method, stopped after ``steps`` steps."""
    return dataclasses.replace(config, train=dataclasses.replace(
        config.train, method=config.train.compare_with, max_steps=steps, compare_with=""))


def finish_comparison(config: RunConfig, run_dir: Path, summary: dict) -> dict:
    """Run (or resume) the comparison a finished run's ``summary`` says is pending, in a
    subfolder; its queries are its own (a white-box step counts one query per example).
    Returns the summary with the comparison in place, written to result.json."""
    pending = summary.pop("comparison_pending")
    folder = run_dir / pending["run_dir"]
    begun = (folder / "config.toml").is_file()   # killed during the comparison: resume it
    folder.mkdir(exist_ok=True)
    _, other = Run(comparison_config(config, summary["steps"])).execute(folder, resume=begun)
    keys = ("test_accuracy", "start_accuracy", "best_validation_accuracy", "steps", "queries", "wall_seconds")
    summary["comparison"] = {"method": pending["method"], "run_dir": folder.name, **{k: other[k] for k in keys}}
    write_result(run_dir, summary)
    (run_dir / INTERRUPTED).unlink(missing_ok=True)          # the run and its comparison have finished
    return summary


def run(config: RunConfig, *, run_dir: Path | None = None, backend: Backend | None = None,
        progress: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    """Build, train, write the run folder. Returns (run folder, result dict)."""
    return Run(config, backend=backend, progress=progress).execute(run_dir)
