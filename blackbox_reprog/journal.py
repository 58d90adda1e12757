"""No paid answer lost: a write-ahead journal and a content-addressed answer store.

Before a call leaves, its *intent* (key, purpose, examples) is appended to ``journal.jsonl``
and fsynced; when the answer arrives it is written to the answer store (atomically) and a
*result* record (key, digest of the stored answer) follows. The key is a digest of the
model's identity and the exact input bytes, so it names the logical query:

- a resumed run, replaying from the start with the same seed, computes the same inputs and
  reads their answers back from the store instead of buying them again;
- a call that was in flight when the process died (an intent with no result) is sent again
  under the same key, which an API honouring idempotency keys recognises and does not bill
  twice; where it is not honoured, it is reported as possibly paid twice.

A torn last line (the process died mid-write) is ignored and cut off before appending; a
damaged line anywhere else is an error naming its line. Answers are stored as ``.npz`` read
with ``allow_pickle=False``: nothing in a run folder can run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import OUTPUT_KINDS, Backend, Prediction
from .files import atomic_write

JOURNAL = "journal.jsonl"
ANSWERS = "answers"
_KEY = re.compile(r"[0-9a-f]{64}")


class JournalError(ValueError):
    """A journal or a stored answer is damaged in a way that cannot be a torn last write."""


def query_key(model_id: str, x: np.ndarray) -> str:
    """The logical query: the model's identity and the exact bytes, dtype and shape sent."""
    digest = hashlib.sha256()
    for part in (model_id, str(x.dtype), repr(tuple(x.shape))):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


# ---- the journal ------------------------------------------------------------------------------
def read_journal(path: Path) -> tuple[list[dict], int]:
    """The records of a journal and the byte length of its complete lines (a torn tail after
    them is not a record). A damaged complete line raises JournalError with its number."""
    raw = path.read_bytes() if path.exists() else b""
    complete = raw.rfind(b"\n") + 1                      # everything after the last newline is torn
    records = []
    for number, line in enumerate(raw[:complete].split(b"\n")[:-1], start=1):
        records.append(_record(line, number, path))
    return records, complete


def _record(line: bytes, number: int, path: Path) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        record = None
    ok = (isinstance(record, dict) and record.get("kind") in ("intent", "result")
          and isinstance(record.get("key"), str) and _KEY.fullmatch(record["key"]) is not None
          and (record["kind"] != "intent" or (isinstance(record.get("n"), int) and not isinstance(record["n"], bool)
                                              and record["n"] > 0 and isinstance(record.get("purpose"), str)))
          and (record["kind"] != "result" or (isinstance(record.get("digest"), str)
                                              and _KEY.fullmatch(record["digest"]) is not None)))
    if not ok:
        shown = line[:60].decode("utf-8", "replace")
        raise JournalError(f"expected an intent or result record on line {number} of {path}, got {shown!r}")
    return record


class Journal:
    """Append-only, one JSON record a line, each write fsynced before the call it announces."""

    def __init__(self, path: Path):
        self.path = Path(path)
        records, complete = read_journal(self.path)
        existed = self.path.exists()
        self.results = {r["key"]: r["digest"] for r in records if r["kind"] == "result"}
        intents = [r for r in records if r["kind"] == "intent"]
        #: calls sent by an earlier process whose answer never came back (killed in flight)
        self.lost = [r for r in intents if r["key"] not in self.results]
        self.records = len(records)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, complete)                   # cut a torn tail before appending
        os.lseek(self._fd, 0, os.SEEK_END)
        if not existed:                                    # the new name must survive a crash too
            _fsync_folder(self.path.parent)
        self._lock = threading.Lock()

    def intent(self, key: str, purpose: str, examples: int) -> None:
        self._append({"kind": "intent", "key": key, "purpose": purpose, "n": int(examples)})

    def result(self, key: str, digest: str) -> None:
        self._append({"kind": "result", "key": key, "digest": digest})
        self.results[key] = digest

    def _append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.records += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the answer store -------------------------------------------------------------------------
class AnswerStore:
    """Answers by key, one ``.npz`` each, written atomically; shareable between runs."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str) -> Prediction | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                kind, classes = str(stored["kind"]), int(stored["num_classes"])
                scores = stored["scores"] if "scores" in stored.files else None
                labels = stored["labels"] if "labels" in stored.files else None
        except Exception as error:   # OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError (an .npy), ...
            raise JournalError(f"expected a stored answer in {path}, got an unreadable file "
                               f"({type(error).__name__}: {error})") from None
        if kind not in OUTPUT_KINDS:
            raise JournalError(f"expected an output kind in {path}, got {kind!r}")
        needs = {"logits": (True, False), "probs": (True, False), "topk": (True, True), "label": (False, True)}[kind]
        if (needs != (scores is not None, labels is not None)
                or any(a is not None and a.ndim != 2 for a in (scores, labels))
                or (scores is not None and labels is not None and scores.shape != labels.shape)):
            raise JournalError(f"expected the arrays of a {kind} answer in {path}, got "
                               f"{'scores ' + str(scores.shape) if scores is not None else 'no scores'} and "
                               f"{'labels ' + str(labels.shape) if labels is not None else 'no labels'}")
        return Prediction(kind, classes, scores=scores, labels=labels)

    def digest(self, key: str) -> str:
        """The digest of a stored answer's bytes, as ``put`` returned it."""
        return hashlib.sha256(self._path(key).read_bytes()).hexdigest()

    def put(self, key: str, answer: Prediction) -> str:
        """Store an answer; returns the digest of the bytes stored (for the result record)."""
        arrays = {"kind": np.array(answer.kind), "num_classes": np.array(answer.num_classes)}
        if answer.scores is not None:
            arrays["scores"] = answer.scores
        if answer.labels is not None:
            arrays["labels"] = answer.labels
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        atomic_write(self._path(key), payload)
        return hashlib.sha256(payload).hexdigest()


# ---- the two together, between the ledger and the backend ----------------------------------------
class Recorder:
    """Answers a batch from the store where it can, buys the rest through the journal.

    The batch is split exactly as the backend would split it (``max_batch``), so one key is
    one call; calls are bought ``concurrency`` at a time when the backend has requests in
    flight together (the http plugin)."""

    def __init__(self, backend: Backend, journal: Journal, store: AnswerStore):
        self.backend, self.journal, self.store = backend, journal, store
        workers = int(getattr(backend, "concurrency", 1))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bbreprog-journal") if workers > 1 else None
        self._unanswered = {r["key"] for r in journal.lost}    # intents an earlier process left open

    def query(self, x: np.ndarray, purpose: str, on_send: Callable[..., None]) -> Prediction:
        size = self.backend.max_batch
        chunks = [x[i:i + size] for i in range(0, len(x), size)]
        keys = [query_key(self.backend.model_id, chunk) for chunk in chunks]
        # an answer stored before its result record was written (killed in between) was paid: use it
        answers: list[Prediction | None] = [self.store.get(key) for key in keys]
        for key, chunk, answer in zip(keys, chunks, answers):
            if answer is not None:
                if key in self._unanswered and key not in self.journal.results:
                    # its intent is in the journal, its answer in the store: the process died
                    # between the two writes; close the intent so the journal stays whole
                    self.journal.result(key, self.store.digest(key))
                on_send(len(chunk), stored=True)
        first_of = {}                                      # identical calls in one batch are bought once
        for i, answer in enumerate(answers):
            if answer is None:
                first_of.setdefault(keys[i], i)
        missing = sorted(first_of.values())

        def buy(i: int) -> Prediction:
            self.journal.intent(keys[i], purpose, len(chunks[i]))
            answer = self.backend.query(chunks[i], on_send=on_send, key=keys[i])
            self.journal.result(keys[i], self.store.put(keys[i], answer))
            return answer

        if self._pool is None or len(missing) < 2:
            bought = [buy(i) for i in missing]
        else:
            futures = [self._pool.submit(buy, i) for i in missing]
            errors = [f.exception() for f in futures]      # every call finishes (and is booked) first
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
            bought = [f.result() for f in futures]
        for i, answer in zip(missing, bought):
            answers[i] = answer
        for i, key in enumerate(keys):                     # the repeats: answered by the first
            if answers[i] is None:
                answers[i] = answers[first_of[key]]
                on_send(len(chunks[i]), stored=True)
        return Prediction.concat(answers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.journal.close()
