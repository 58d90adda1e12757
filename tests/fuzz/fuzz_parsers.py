"""atheris (libFuzzer) harnesses for the two parsers that read bytes from outside the toolkit:

- ``protocols``: an endpoint's raw answer → ``bbreprog_http.backend._json`` → ``decode`` of every
  protocol under every output contract. The only exception allowed is ``ResponseError``; an
  answer that decodes must keep its contract (shape, dtype, finite scores, labels in range,
  probabilities that are probabilities, top-k best first).
- ``structured``: the same, from JSON values built by ``FuzzedDataProvider`` to look like
  answers (V2 outputs, grids of numbers, the protocols' keys), so few inputs die in the parser.
- ``journal``: any bytes as ``journal.jsonl`` → ``read_journal``. The only exception allowed is
  ``JournalError``; what it returns must be intent/result records and a complete-lines length.

Run one for a minute (libFuzzer flags after the target; a seed corpus and a dictionary are
written to a temporary folder and used unless you name your own corpus folder)::

    .venv/bin/python tests/fuzz/fuzz_parsers.py protocols -max_total_time=60
    .venv/bin/python tests/fuzz/fuzz_parsers.py journal -max_total_time=60 -artifact_prefix=/tmp/

A finding is a real bug: libFuzzer stops, prints the exception and writes the input to
``crash-<sha1>`` (under -artifact_prefix); replay it with the same command and the file's path.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # the repository root, for blackbox_reprog

with atheris.instrument_imports(include=["bbreprog_http", "blackbox_reprog.run.journal"]):
    from bbreprog_http.backend import _json
    from bbreprog_http.protocols import PROBABILITY_TOLERANCE, V2, Contract, MLflow, Template, TFServing
    from bbreprog_http.transport import ResponseError
    from blackbox_reprog.run.journal import JournalError, read_journal

CLASSES = 3
NAMES = ["cat", "dog", "fox"]
PROTOCOLS = [V2("m"), V2("m", scores_output="scores", labels_output="labels"), TFServing("m"), MLflow(),
             Template(path="/api", scores_path="result.scores", topk_path="result.top", labels_path="result.0")]
CONTRACTS = [Contract("logits", CLASSES), Contract("probs", CLASSES), Contract("topk", CLASSES, k=2),
             Contract("label", CLASSES), Contract("topk", CLASSES, k=2, labels=NAMES),
             Contract("label", CLASSES, labels=NAMES)]
PAIRS = [(p, c) for p in PROTOCOLS for c in CONTRACTS]


# ---- protocols -------------------------------------------------------------------------------
def protocols(data: bytes) -> None:
    """Byte 0 picks (protocol, contract), byte 1 the batch size (1-3); the rest is the answer body."""
    if len(data) < 2:
        return
    protocol, contract = PAIRS[data[0] % len(PAIRS)]
    batch = 1 + data[1] % 3
    try:
        body = _json(data[2:])
        prediction = protocol.decode(body, batch, contract)
    except ResponseError as error:
        one_sentence(error)
        return
    keeps_contract(prediction, contract, batch)


KEYS = ["outputs", "name", "datatype", "shape", "data", "predictions", "scores", "labels", "logits", "probs",
        "result", "top", "label", "score", "error", "0", "model_version", "parameters"]
WORDS = ["FP32", "FP64", "INT64", "BYTES", "BOOL", "cat", "dog", "fox", "labels", "scores", "logits", "probs", "o", ""]


def _leaf(fdp):
    choice = fdp.ConsumeIntInRange(0, 6)
    if choice == 0:
        return None
    if choice == 1:
        return fdp.ConsumeBool()
    if choice == 2:
        return fdp.ConsumeIntInRange(-2, 4)
    if choice == 3:
        return fdp.ConsumeInt(10)                                   # up to 80 bits: beyond int64
    if choice == 4:
        return fdp.ConsumeFloat()                                   # NaN, ±inf, huge and tiny included
    if choice == 5:
        return fdp.ConsumeProbability()
    return WORDS[fdp.ConsumeIntInRange(0, len(WORDS) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(3)


def _value(fdp, depth: int = 0):
    """A JSON value shaped like answers: objects with the protocols' keys, V2 outputs, grids."""
    choice = fdp.ConsumeIntInRange(0, 9) if depth < 4 else 0
    if choice <= 3:
        return _leaf(fdp)
    if choice <= 5:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if choice <= 7:
        return {(KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(2)):
                _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}
    if choice == 8:                                                 # a V2 output, each field perhaps wrong
        return {"name": _value(fdp, 3), "datatype": _value(fdp, 3), "shape": _value(fdp, depth + 1),
                "data": _value(fdp, depth + 1)}
    rows, cols = fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(0, 4)  # a grid of numbers (or not)
    return [[_leaf(fdp) if fdp.ConsumeIntInRange(0, 7) == 0 else fdp.ConsumeRegularFloat() for _ in range(cols)]
            for _ in range(rows)]


def structured(data: bytes) -> None:
    """The same contract as ``protocols``, from JSON values built to look like answers (far
    fewer inputs die in the JSON parser); each is also sent through a JSON round trip."""
    fdp = atheris.FuzzedDataProvider(data)
    protocol, contract = PAIRS[fdp.ConsumeIntInRange(0, len(PAIRS) - 1)]
    batch = fdp.ConsumeIntInRange(1, 3)
    body = _value(fdp)
    for candidate in (body, json.loads(json.dumps(body))):
        try:
            prediction = protocol.decode(candidate, batch, contract)
        except ResponseError as error:
            one_sentence(error)
            continue
        keeps_contract(prediction, contract, batch)


def one_sentence(error: Exception) -> None:
    message = str(error)
    if "\n" in message or not message.startswith("expected"):
        raise AssertionError(f"not one sentence: {message!r}") from None


def keeps_contract(p, contract: Contract, batch: int) -> None:
    assert p.kind == contract.kind and p.num_classes == CLASSES, (p.kind, p.num_classes)
    if contract.kind in ("logits", "probs"):
        assert p.labels is None and p.scores.shape == (batch, CLASSES) and p.scores.dtype == np.float32
        assert np.isfinite(p.scores).all(), p.scores
        if contract.kind == "probs":
            tol = PROBABILITY_TOLERANCE + 1e-6
            assert p.scores.min() >= -tol and p.scores.max() <= 1 + tol, p.scores
            assert np.abs(p.scores.astype(np.float64).sum(axis=1) - 1).max() <= tol, p.scores
        return
    width = contract.k if contract.kind == "topk" else 1
    assert p.labels.shape == (batch, width) and p.labels.dtype.kind in "iu", (p.labels.shape, p.labels.dtype)
    assert p.labels.min() >= 0 and p.labels.max() < CLASSES, p.labels
    if contract.kind == "topk":
        assert p.scores.shape == (batch, width) and p.scores.dtype == np.float32
        assert np.isfinite(p.scores).all() and (np.diff(p.scores, axis=1) <= 0).all(), p.scores
    else:
        assert p.scores is None


def v2(*outputs) -> dict:
    return {"model_name": "m", "outputs": [{"name": n, "datatype": t, "shape": list(np.shape(v)),
                                            "data": np.ravel(v).tolist()} for n, t, v in outputs]}


def protocol_seeds() -> list[bytes]:
    logits, probs = [[0.1, -2.0, 3.5]], [[0.2, 0.5, 0.3]]
    top = {"labels": [[2, 0]], "scores": [[0.7, 0.1]]}
    bodies = {
        ("v2", "logits"): v2(("logits", "FP32", logits)), ("v2", "probs"): v2(("probs", "FP64", probs)),
        ("v2", "topk"): v2(("labels", "INT64", top["labels"]), ("scores", "FP32", top["scores"])),
        ("v2", "label"): v2(("labels", "INT64", [[1]])),
        ("v2", "names"): {"outputs": [{"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["fox"]}]},
        ("rows", "logits"): {"predictions": logits}, ("rows", "probs"): {"predictions": probs},
        ("rows", "topk"): {"predictions": [{"labels": [2, 0], "scores": [0.7, 0.1]}]},
        ("rows", "label"): {"predictions": [2]}, ("rows", "names"): {"predictions": ["dog"]},
        ("template", "scores"): {"result": {"scores": probs, "top": [[{"label": "fox", "score": 0.6},
                                                                       {"label": "cat", "score": 0.3}]], "0": [1]}},
        ("any", "error"): {"error": "model m is not ready"},
    }
    seeds = []
    for index, (protocol, contract) in enumerate(PAIRS):
        family = {"v2": "v2", "tfserving": "rows", "mlflow": "rows", "template": "template"}[protocol.name]
        for (kind, _), body in bodies.items():
            if kind in (family, "any"):
                seeds.append(bytes([index, 0]) + json.dumps(body).encode())
    seeds.append(bytes([0, 0]) + b'{"outputs": [{"name": "o", "datatype": "FP32", "shape": [1, 3], "data": [NaN, 1e39, -Infinity]}]}')
    return seeds


PROTOCOL_TOKENS = ['"outputs"', '"name"', '"datatype"', '"shape"', '"data"', '"FP32"', '"FP64"', '"INT64"', '"BYTES"',
                   '"BOOL"', '"predictions"', '"scores"', '"labels"', '"logits"', '"probs"', '"result"', '"top"',
                   '"label"', '"score"', '"error"', '"cat"', '"dog"', '"fox"', "NaN", "Infinity", "-Infinity",
                   "1e39", "null", "true", "false", "[[", "]]", "0.5", "-1", "18446744073709551616"]


# ---- journal ----------------------------------------------------------------------------------
#: where the harness writes (seed corpus, dictionary, the journal file); a temporary folder by default
TMP = os.environ.get("BBREPROG_FUZZ_TMP") or None
_JOURNAL = Path(tempfile.mkdtemp(prefix="bbreprog-fuzz-", dir=TMP or ("/dev/shm" if os.path.isdir("/dev/shm") else None))) / "journal.jsonl"


def journal(data: bytes) -> None:
    _JOURNAL.write_bytes(data)
    try:
        records, complete = read_journal(_JOURNAL)
    except JournalError as error:
        message = str(error)
        if "\n" in message or not message.startswith("expected"):
            raise AssertionError(f"not one sentence: {message!r}") from None
        return
    assert 0 <= complete <= len(data) and (complete == 0 or data[complete - 1:complete] == b"\n"), complete
    assert len(records) == data[:complete].count(b"\n"), (len(records), complete)
    for record in records:
        assert isinstance(record, dict) and record["kind"] in ("intent", "result"), record
        assert isinstance(record["key"], str) and len(record["key"]) == 64, record
        if record["kind"] == "intent":
            assert type(record["n"]) is int and record["n"] > 0 and isinstance(record["purpose"], str), record
        else:
            assert isinstance(record["digest"], str) and len(record["digest"]) == 64, record


def journal_seeds() -> list[bytes]:
    key, digest = "a" * 64, "0123456789abcdef" * 4
    intent = json.dumps({"kind": "intent", "key": key, "purpose": "train", "n": 8}, separators=(",", ":"))
    result = json.dumps({"kind": "result", "key": key, "digest": digest}, separators=(",", ":"))
    return [f"{intent}\n{result}\n".encode(), f"{intent}\n{result[:30]}".encode(), f"{intent}\n".encode() * 3, b""]


JOURNAL_TOKENS = ['"kind"', '"intent"', '"result"', '"key"', '"digest"', '"purpose"', '"n"', '"train"', '"' + "a" * 64 + '"',
                  "\\n", "true", "1e400", "-1", "0", "NaN", "{}", "[]", "\\ud800"]

TARGETS = {"protocols": (protocols, protocol_seeds, PROTOCOL_TOKENS),
           "structured": (structured, lambda: [bytes(range(i, i + 64)) for i in range(0, 192, 8)], []),
           "journal": (journal, journal_seeds, JOURNAL_TOKENS)}


def _dictionary(tokens: list[str], path: Path) -> None:
    """libFuzzer's dictionary format: one quoted token a line (backslash and quote escaped)."""
    lines = [f'"{t.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for t in tokens]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags] [corpus folder]")
    target, seeds, tokens = TARGETS[argv[1]]
    flags = [argv[0], *argv[2:]]
    if not any(not a.startswith("-") for a in argv[2:]):        # no corpus named: start from the seeds
        corpus = Path(tempfile.mkdtemp(prefix=f"bbreprog-fuzz-{argv[1]}-", dir=TMP))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        flags.append(str(corpus))
    if tokens and not any(a.startswith("-dict=") for a in flags):
        dictionary = Path(tempfile.mkdtemp(prefix="bbreprog-fuzz-dict-", dir=TMP)) / f"{argv[1]}.dict"
        _dictionary(tokens, dictionary)
        flags.append(f"-dict={dictionary}")
    atheris.Setup(flags, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
