"""The content-addressed answer store: every answer bought, by its query key, one ``.npz``
each, written atomically and read with ``allow_pickle=False`` (nothing in it can run code).
A store may be shared between runs; the journal (``journal``) records the digest of each
answer it holds, so that a changed or damaged file is refused when it is read back."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from ..backends.base import OUTPUT_KINDS, Prediction
from ..errors import Refusal
from ..files import atomic_write


class JournalError(Refusal):
    """A journal or a stored answer is damaged in a way that cannot be a torn last write.
    (Defined here, below the journal, because the store raises it too.)"""


class AnswerStore:
    """Answers by key, one ``.npz`` each, written atomically; shareable between runs."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, digest: str | None = None) -> Prediction | None:
        """The stored answer, or None; with ``digest`` (from the journal's result record) the
        file's bytes must be the bytes that were stored."""
        path = self._path(key)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise JournalError(f"expected a readable stored answer in {path}, got {type(error).__name__}") from None
        if digest is not None and hashlib.sha256(payload).hexdigest() != digest:
            raise JournalError(f"expected the stored answer {path} to match its digest in the journal, got "
                               "different bytes: the file was changed or damaged since it was bought")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
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

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, answer: Prediction) -> tuple[str, bool]:
        """Store an answer; returns the digest of the bytes stored (for the result record) and
        whether they are this answer's: a store shared between runs keeps the answer another
        run stored first under the same key (a model need not answer bit for bit alike twice),
        so that every journal's digest of it stays true."""
        arrays = {"kind": np.array(answer.kind), "num_classes": np.array(answer.num_classes)}
        if answer.scores is not None:
            arrays["scores"] = answer.scores
        if answer.labels is not None:
            arrays["labels"] = answer.labels
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        if not atomic_write(self._path(key), payload, replace=False):
            return self.digest(key), False
        return hashlib.sha256(payload).hexdigest(), True
