"""No paid answer lost: a write-ahead journal beside the content-addressed answer store
(``answers``), and the Recorder that puts the two between the ledger and the backend.

Before a call leaves, its *intent* (key, purpose, examples) is appended to ``journal.jsonl``
and fsynced; each resend after a failure is a *retry* record, written before it leaves too.
When the answer arrives it is written to the answer store (atomically) and a *result* record
(key, digest of the stored answer) follows; a call that ends in an error gets a *failed*
record instead. The key is a digest of the model's identity and the exact input bytes, so it
names the logical query:

- a resumed run, replaying from the start with the same seed, computes the same inputs and
  reads their answers back from the store (checked against their digests) instead of buying
  them again; a replay that asks for a query the run never made while answers it bought are
  still unread has drifted (code, data or model changed) and is refused;
- every attempt an earlier process made beyond the one answer the replay reads back (its
  retries; calls in flight when it died, unless the API honours idempotency keys) was
  possibly billed, so it is booked against the budget when the replay reaches that call,
  before the call's batch is admitted — the replay then counts exactly as the interrupted
  run did, and a call lost in flight costs the replay its examples (after such a loss, the
  rest of what earlier processes sent is booked at once: the replay may now end sooner);
- a call that was in flight when the process died is sent again under the same key, which
  an API honouring idempotency keys recognises and does not bill twice.

A torn last line (the process died mid-write) is ignored and cut off before appending; a
damaged line anywhere else is an error naming its line. One process writes a journal at a
time (an exclusive lock). Answers are stored as ``.npz`` read with ``allow_pickle=False``:
nothing in a run folder can run code.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .answers import AnswerStore, JournalError
from ..backends.base import Backend, Prediction
from ..backends.ledger import PURPOSES

JOURNAL = "journal.jsonl"
ANSWERS = "answers"
_KEY = re.compile(r"[0-9a-f]{64}")
ATTEMPTS = ("intent", "retry")          # records of examples sent, each possibly billed


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
    if not _well_formed(record):
        shown = line[:60].decode("utf-8", "replace")
        raise JournalError(f"expected an intent, retry, result or failed record on line {number} of {path}, "
                           f"got {shown!r}")
    return record


def _well_formed(record: object) -> bool:
    if not (isinstance(record, dict) and isinstance(record.get("key"), str) and _KEY.fullmatch(record["key"])):
        return False
    kind = record.get("kind")
    if kind in ATTEMPTS:
        n = record.get("n")
        return isinstance(n, int) and not isinstance(n, bool) and n > 0 and record.get("purpose") in PURPOSES
    if kind == "result":
        return isinstance(record.get("digest"), str) and _KEY.fullmatch(record["digest"]) is not None
    return kind == "failed" and isinstance(record.get("error"), str)


class Journal:
    """Append-only, one JSON record a line, each write fsynced before the call it announces;
    held under an exclusive lock so that two processes never write one run's journal."""

    def __init__(self, path: Path):
        self.path = Path(path)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            records, complete = read_journal(self.path)
        except BlockingIOError:
            os.close(self._fd)
            raise JournalError(f"expected no other process writing {self.path}, got it locked: is another "
                               "`bbreprog` still running on this run folder?") from None
        except BaseException:
            os.close(self._fd)
            raise
        os.ftruncate(self._fd, complete)                   # cut a torn tail before appending
        os.lseek(self._fd, 0, os.SEEK_END)
        if not existed:                                    # the new name must survive a crash too
            _fsync_folder(self.path.parent)
        #: what earlier processes of this run did: answers bought (key -> digest), examples sent
        self.results = {r["key"]: r["digest"] for r in records if r["kind"] == "result"}
        self.earlier_attempts = [r for r in records if r["kind"] in ATTEMPTS]
        #: calls sent by an earlier process whose answer never came back (killed in flight)
        self.lost = [r for r in records if r["kind"] == "intent" and r["key"] not in self.results]
        self.records = len(records)
        self._lock = threading.Lock()

    def intent(self, key: str, purpose: str, examples: int) -> None:
        self._append({"kind": "intent", "key": key, "purpose": purpose, "n": int(examples)})

    def retry(self, key: str, purpose: str, examples: int) -> None:
        self._append({"kind": "retry", "key": key, "purpose": purpose, "n": int(examples)})

    def result(self, key: str, digest: str) -> None:
        self._append({"kind": "result", "key": key, "digest": digest})
        self.results[key] = digest

    def failed(self, key: str, error: BaseException) -> None:
        self._append({"kind": "failed", "key": key, "error": type(error).__name__})

    def _append(self, record: dict) -> None:
        line = memoryview((json.dumps(record, separators=(",", ":")) + "\n").encode())
        with self._lock:
            while line:                                    # a write may take only part of it
                line = line[os.write(self._fd, line):]
            os.fsync(self._fd)
            self.records += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)                             # releases the lock
            self._fd = -1


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the two together, between the ledger and the backend ----------------------------------------
class Recorder:
    """Answers a batch from the store where it can, buys the rest through the journal.

    The batch is split exactly as the backend's ``query`` splits it (``backend.split``), so one
    key is one call; calls are bought ``capabilities.concurrency`` at a time when the backend has
    requests in flight together (the http plugin)."""

    def __init__(self, backend: Backend, journal: Journal, store: AnswerStore):
        self.backend, self.journal, self.store = backend, journal, store
        workers = backend.capabilities.concurrency
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bbreprog-journal") if workers > 1 else None
        self._unanswered = {r["key"] for r in journal.lost}    # intents an earlier process left open
        self._unread = set(journal.results)                   # answers earlier processes bought, not yet replayed
        self._earlier: dict[str, list[dict]] = {}             # key -> what earlier processes sent, not yet booked
        for record in journal.earlier_attempts:
            self._earlier.setdefault(record["key"], []).append(record)
        self._sent_before = set(self._earlier)
        self._diverged = False                                # the replay may now end differently
        self._keys: tuple[np.ndarray, list[str]] | None = None
        #: the endpoint bills a call resent under its key once (declared by the backend's config)
        self.idempotent = backend.capabilities.honours_idempotency
        self.ledger = None                                    # set by Ledger.record_with
        self.earlier_booked = {"calls": 0, "queries": 0}
        # answers read back: the first read of an answer an earlier process bought (billed to
        # this run, by that process) apart from the rest (repeats, another run's purchases)
        self._bought_before = set(journal.results) | self._unanswered
        self.read_back = {"bought_by_earlier_processes": 0, "not_bought": 0}

    def _chunk_keys(self, x: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """The calls ``x`` is split into (as the backend's ``query`` splits it) and their keys."""
        chunks = self.backend.split(x)
        if self._keys is not None and self._keys[0] is x:    # asked by book_earlier, then by query
            return chunks, self._keys[1]
        keys = [query_key(self.backend.model_id, chunk) for chunk in chunks]
        self._keys = (x, keys)
        return chunks, keys

    # ---- what earlier processes of this run sent ------------------------------------------------
    def book_earlier(self, x: np.ndarray) -> None:
        """Before the ledger admits a batch: book what earlier processes sent for its calls
        beyond the one answer the replay reads back — their retries, and (unless the endpoint
        honours idempotency keys) the sends whose answer was lost."""
        for key in dict.fromkeys(self._chunk_keys(x)[1]):
            self._book_earlier(key)

    def _book_earlier(self, key: str) -> None:
        records = self._earlier.pop(key, None)
        if not records:
            return
        read_back = key in self.journal.results or self.store.has(key)   # one send of it paid for this answer
        lost = False
        for record in records:
            if record["kind"] == "intent" and read_back:
                read_back = False                          # the replay books that one as it reads it back
                continue
            if record["kind"] == "intent" and self.idempotent:
                continue                                   # resent under the same key: not billed again
            self.ledger.book_spent(record["purpose"], record["n"])
            self.earlier_booked["calls"] += 1
            self.earlier_booked["queries"] += record["n"]
            lost |= record["kind"] == "intent"
        if lost and not self._diverged:
            # the replay has less to spend than the interrupted run had: it may stop sooner and
            # never reach the rest, so the rest of what was spent is booked now
            self._diverged = True
            for other in list(self._earlier):
                self._book_earlier(other)

    # ---- a batch -------------------------------------------------------------------------------
    def query(self, x: np.ndarray, purpose: str, on_send: Callable[..., None]) -> Prediction:
        chunks, keys = self._chunk_keys(x)
        self._keys = None
        # an answer stored before its result record was written (killed in between) was paid: use it
        answers: list[Prediction | None] = [self._read_back(key, len(chunk)) for key, chunk in zip(keys, chunks)]
        for key, chunk, answer in zip(keys, chunks, answers):
            if answer is not None:
                if key in self._unanswered and key not in self.journal.results:
                    # its intent is in the journal, its answer in the store: the process died
                    # between the two writes; close the intent so the journal stays whole
                    self.journal.result(key, self.store.digest(key))
                self._count_read_back(key, len(chunk))
                on_send(len(chunk), stored=True)
        first_of = {}                                      # identical calls in one batch are bought once
        for i, answer in enumerate(answers):
            if answer is None:
                first_of.setdefault(keys[i], i)
        missing = sorted(first_of.values())
        self._refuse_drift([keys[i] for i in missing], keys)

        if self._pool is None or len(missing) < 2:
            bought = [self._buy(keys[i], chunks[i], purpose, on_send) for i in missing]
        else:
            futures = [self._pool.submit(self._buy, keys[i], chunks[i], purpose, on_send) for i in missing]
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
                self._count_read_back(key, len(chunks[i]))
                on_send(len(chunks[i]), stored=True)
        return Prediction.concat(answers)

    def _count_read_back(self, key: str, examples: int) -> None:
        if key in self._bought_before:
            self._bought_before.discard(key)
            self.read_back["bought_by_earlier_processes"] += examples
        else:
            self.read_back["not_bought"] += examples

    def _read_back(self, key: str, examples: int) -> Prediction | None:
        """A stored answer, checked like a fresh one: its bytes against the journal's digest,
        its shape, classes and values against the backend."""
        answer = self.store.get(key, self.journal.results.get(key))
        if answer is None:
            return None
        try:
            return self.backend.check_answer(answer, examples)
        except RuntimeError as error:
            raise JournalError(f"expected the stored answer for {key[:12]}… to fit the backend, got: {error}") from None

    def _refuse_drift(self, missing: list[str], keys: list[str]) -> None:
        """A replay asks again, in order, for what the interrupted run asked; a query it never
        made, while answers it bought are still unread, means the replay went another way —
        unless a call lost in flight left it less to spend (then it may end sooner)."""
        self._unread.difference_update(keys)
        new = [key for key in missing if key not in self._sent_before]
        if new and self._unread and not self._diverged:
            raise JournalError(
                f"expected the resumed run to ask for the queries the interrupted run made, got a new one while "
                f"{len(self._unread)} of the answers it bought are unread: the code, the data or the model changed "
                "since the run began (nothing more was bought)")

    def _buy(self, key: str, chunk: np.ndarray, purpose: str, on_send: Callable[..., None]) -> Prediction:
        self.journal.intent(key, purpose, len(chunk))

        def booked(queries: int, retry: bool = False, stored: bool = False) -> None:
            on_send(queries, retry=retry, stored=stored)   # admitted first: a refused retry is not sent
            if retry:
                self.journal.retry(key, purpose, queries)

        try:
            answer = self.backend.query(chunk, on_send=booked, key=key)
        except BaseException as error:
            self.journal.failed(key, error)
            raise
        digest, ours = self.store.put(key, answer)
        self.journal.result(key, digest)
        # another run sharing the store bought this key first: its answer is the one kept
        return answer if ours else self._read_back(key, len(chunk))

    def summary(self, ledger: dict) -> dict:
        """For result.json: what the journal saw across every process of this run."""
        from collections import Counter
        records, _ = read_journal(self.journal.path)
        intents = [r for r in records if r["kind"] == "intent"]
        sent = Counter(r["key"] for r in intents)
        resent = [r for r in intents if sent[r["key"]] > 1]
        return {
            "file": JOURNAL, "records": len(records), "answers_from_store": ledger["total"]["stored"],
            # of those: bought (and billed) by processes of this run that were interrupted, or
            # never bought again (repeated queries, answers another run sharing the store bought)
            "answers_from_store_by_origin": dict(self.read_back),
            # calls a process died with in flight, sent again under the same key by a later one
            "resent_after_interruption": {
                "calls": len(resent) - len({r["key"] for r in resent}),
                "queries": sum(r["n"] for r in resent) - sum({r["key"]: r["n"] for r in resent}.values())},
            "failed_calls": sum(r["kind"] == "failed" for r in records),
            # what earlier processes sent beyond the answers read back, booked as retried
            "earlier_attempts_booked": {**self.earlier_booked, "endpoint_honours_idempotency": self.idempotent},
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.journal.close()
