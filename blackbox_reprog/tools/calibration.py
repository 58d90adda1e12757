"""Probabilities for predict's scores: temperature scaling on the run's validation split.

The label map's scores are log-scale scores, not probabilities: a many-to-one map scores the
mean probability of a class's source labels (which need not sum to 1 over the classes), a
linear head scores logits, and a softmax of either is only as confident as the model and the
map happen to be. ``Calibration`` fits the one number T of temperature scaling (Guo et al.,
2017) on the chosen program's scores of the run's validation split — examples that never
trained θ — so that softmax(scores / T) matches how often the run is right there.

Where the validation scores come from, cheapest first:

- program.pt's ``calibration`` entry, when training saved the scores it computed anyway to
  choose the program (``saved_calibration``; no query);
- ``calibrate``: the validation split read again and sent through the chosen program, each
  call's answer read back from the run's answer store when the run kept one (a journaled run),
  bought otherwise: one query per example, booked under ``validate``, outside any budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.base import Backend, Prediction
from ..backends.ledger import Ledger
from ..errors import Refusal
from ..run.answers import AnswerStore
from ..run.journal import ANSWERS, JOURNAL, query_key, read_journal
from ..run.program import Program

#: program.pt's entry for the chosen program's validation scores, when training saved them:
#: {"scores": (N, K) float tensor of the map's scores, "labels": (N,) int tensor of class indices}
CALIBRATION = "calibration"


@dataclass
class Calibration:
    """Temperature scaling (Guo et al., 2017): probabilities softmax(scores / T) with the one
    T that best fits the run's validation split under the chosen program and its map (see
    ``fit_temperature``). It changes how confident the probabilities are, never which class
    wins. The same examples chose the program, so they are slightly optimistic, and a split of
    a few dozen examples fits T only roughly."""
    temperature: float
    examples: int               # validation examples T was fitted on
    nll: float                  # mean NLL on them at T
    nll_softmax: float          # mean NLL at T = 1: a plain softmax of the scores
    answers: str                # where their answers came from (a phrase)
    queries: int = 0            # bought to fit T (0: every answer was already paid for)

    @classmethod
    def fitted(cls, scores: np.ndarray, labels: np.ndarray, answers: str, queries: int = 0) -> "Calibration":
        """Fitted on (N, K) validation scores and their (N,) true classes."""
        temperature, nll, nll_softmax = fit_temperature(scores, labels)
        return cls(temperature, len(labels), nll, nll_softmax, answers, queries)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """(N, K) scores → (N, K) probabilities."""
        z = np.asarray(scores, dtype=np.float64) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def describe(self) -> dict:
        return {"method": "temperature scaling on the run's validation split, targets softened as Platt's", "temperature": self.temperature,
                "examples": self.examples, "answers": self.answers, "queries": self.queries,
                "validation_nll": self.nll, "validation_nll_plain_softmax": self.nll_softmax}


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(T, mean NLL at T, mean NLL at T = 1) for (N, K) scores and (N,) true classes.

    T minimises the cross-entropy against targets softened as Platt (1999) softens his: an
    example of a class with n validation examples puts (n + 1) / (n + 2) on its class and the
    rest evenly on the others. A few dozen examples cannot show that the run is never wrong:
    when the program gets them all right, the fit stops near those targets instead of driving T
    to 0 (every probability 1). The loss is convex in 1/T, so a golden-section search over
    log(1/T) in [-7, 7] finds its minimum. The NLLs returned are the plain ones, of the labels."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=1, keepdims=True)                             # (N, K), each row's best is 0
    y = np.asarray(y, dtype=np.int64)
    n, k = s.shape
    count = np.bincount(y, minlength=k)[y]                            # (N,) examples of each one's class
    right = (count + 1) / (count + 2)
    targets = np.tile(((1 - right) / max(k - 1, 1))[:, None], (1, k))  # (N, K)
    targets[np.arange(n), y] = right if k > 1 else 1.0

    def loss(log_beta: float, target: np.ndarray) -> float:
        z = np.exp(log_beta) * s
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - (target * z).sum(axis=1)))

    hard = np.eye(k)[y]
    low, high, ratio = -7.0, 7.0, (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, b) if loss(a, targets) <= loss(b, targets) else (a, high)
    log_beta = (low + high) / 2
    return float(np.exp(-log_beta)), loss(log_beta, hard), loss(0.0, hard)


def saved_calibration(run_dir: str | Path, program: Program) -> Calibration | None:
    """The calibration of the validation scores training saved in program.pt; None when it
    saved none (runs written before it did)."""
    import torch
    saved = torch.load(Path(run_dir) / "program.pt", map_location="cpu", weights_only=True).get(CALIBRATION)
    if not saved:
        return None
    scores, labels = saved["scores"].double().numpy(), saved["labels"].long().numpy()
    if (scores.ndim != 2 or scores.shape != (len(labels), len(program.classes)) or not len(labels)
            or labels.min() < 0 or labels.max() >= len(program.classes) or not np.isfinite(scores).all()):
        raise Refusal(f"expected finite validation scores of shape (N, {len(program.classes)}) with N class "
                      f"indices in {Path(run_dir) / 'program.pt'}, got {tuple(scores.shape)} and {len(labels)} labels")
    return Calibration.fitted(scores, labels, "saved in program.pt by training")


def calibrate(program: Program, run_dir: str | Path) -> Calibration:
    """Fit T on the chosen program's scores of the run's validation split, read again: each
    call's answer is read back from the run's answer store when the run kept one (a journaled
    run: train.journal on, or a remote model), and bought otherwise, one query per example,
    booked under 'validate' outside any budget."""
    config = program.config
    if config is None:
        raise Refusal(f"expected config.toml in {run_dir} naming the run's data to calibrate on, got none")
    validation = config.data.splits(config.seed).validation
    if list(validation.classes) != list(program.classes):
        raise Refusal(f"expected the run's classes ({listed(program.classes)}) in its validation split, got "
                      f"{listed(list(validation.classes))}")
    store = Path(config.train.answer_store).expanduser() if config.train.answer_store else Path(run_dir) / ANSWERS
    backend = program.backend
    if store.is_dir():
        backend = StoreFirst(backend, AnswerStore(store), Path(run_dir) / JOURNAL)
    ledger = Ledger(backend, None)
    scores = program.target_logits(validation.x, ledger, "validate").double().numpy()    # (N, K)
    tally = ledger.summary()["validate"]
    bought = tally["queries"] - tally["stored"]
    answers = ", ".join(([f"{tally['stored']:,} read back from the run's answer store"] if tally["stored"] else [])
                        + ([f"{bought:,} bought, counted under validate"] if bought else []))
    return Calibration.fitted(scores, validation.y, answers, bought)


class StoreFirst(Backend):
    """A backend that answers each call from an answer store when the store holds it (checked
    against the journal's digest when the journal names it), and asks the model otherwise.
    It splits a batch as the backend does, so one call is one key, as the journal keyed it."""

    def __init__(self, inner: Backend, store: AnswerStore, journal: Path):
        self.inner, self.store = inner, store
        self.digests = ({r["key"]: r["digest"] for r in read_journal(journal)[0] if r["kind"] == "result"}
                        if journal.is_file() else {})
        self.name, self.model_id, self.capabilities = inner.name, inner.model_id, inner.capabilities
        self.input_spec, self.output_kind = inner.input_spec, inner.output_kind
        self.num_classes, self.max_batch = inner.num_classes, inner.max_batch

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        return self.inner.split(x)

    def query(self, x: np.ndarray, on_send=None, key: str | None = None) -> Prediction:
        answers = []
        for chunk in self.inner.split(x):
            chunk_key = query_key(self.inner.model_id, chunk)
            answer = self.store.get(chunk_key, self.digests.get(chunk_key))
            if answer is None:
                answers.append(self.inner.query(chunk, on_send=on_send, key=chunk_key))
                continue
            answers.append(self.inner.check_answer(answer, len(chunk)))
            if on_send:
                on_send(len(chunk), stored=True)
        return Prediction.concat(answers)

    def close(self) -> None:
        self.inner.close()


def listed(classes, most: int = 10) -> str:
    shown = ", ".join(classes[:most])
    return shown + (", …" if len(classes) > most else "")
