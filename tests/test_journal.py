"""The write-ahead journal and the answer store: a resume from any torn tail re-buys nothing
and reaches the same θ; damage that cannot be a torn write is refused with its line, before
any query; reading never fails with anything but JournalError; stored answers round-trip
bit-exactly; the query key tells apart everything that changes an answer."""
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from blackbox_reprog.run.answers import AnswerStore
from blackbox_reprog.backends.base import OUTPUT_KINDS, CallableBackend, Capabilities, Prediction
from blackbox_reprog.tools.cli import main
from blackbox_reprog.run.config import load_config
from blackbox_reprog.run.journal import JOURNAL, Journal, JournalError, query_key, read_journal
from blackbox_reprog.run.runner import Run
from tests.models import CALLS, reset_calls, signal_model

KEY_A, KEY_B = "a" * 64, "b" * 64


def tiny_config(store, seed=3, **train):
    """A run of 14 steps on UnitTest against the local signal model, journal on, in calls of 16."""
    return load_config(base={
        "budget": 400, "seed": seed, "name": "tiny",
        "backend": {"name": "callable", "model": "tests.models:signal_model", "options": {
            "input_shape": [1024], "num_classes": 32, "value_range": [-10.0, 10.0], "max_batch": 16}},
        "data": {"name": "UnitTest"}, "transform": {"kind": "signal", "grid": 16},
        "label_map": {"kind": "frequency", "per_class": 2}, "estimator": {"kind": "random", "directions": 2},
        "train": {"batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "journal": "on",
                  "answer_store": str(store), **train}})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run whose answers live in a store outside its folder (shared, read-only
    here, by the resumes below)."""
    base = tmp_path_factory.mktemp("finished")
    config = tiny_config(base / "store")
    (base / "run").mkdir()
    reset_calls()
    run_dir, summary = Run(config).execute(base / "run")
    assert CALLS["count"] > 20 and summary["journal"]["answers_from_store"] == 0
    return {"config": config, "run_dir": run_dir, "summary": summary, "journal": (run_dir / JOURNAL).read_bytes(),
            "theta": torch.load(run_dir / "program.pt", weights_only=True)["theta"]}


def interrupted_copy(finished, folder, journal: bytes):
    """The finished run's folder as a killed process would have left it, with this journal."""
    folder.mkdir()
    for name in ("config.toml", "checkpoint.pt"):
        shutil.copy(finished["run_dir"] / name, folder / name)
    (folder / JOURNAL).write_bytes(journal)
    return folder


# ---- a torn tail at every byte ------------------------------------------------------------
@pytest.mark.slow
def test_resume_from_a_journal_cut_at_every_byte_of_its_last_record_rebuys_nothing(finished, tmp_path, monkeypatch):
    """The full resume, in process, at EVERY offset of the last record (a result), from
    before its first byte to after its newline: each re-buys nothing, reaches the same θ, and
    leaves the journal byte for byte as the uninterrupted run wrote it (the torn result is cut,
    then written again from the stored answer). The accuracy plot, two thirds of a resume's
    time and nothing to do with the journal, is not drawn."""
    monkeypatch.setattr("blackbox_reprog.run.plot.plot_run", lambda *args, **kwargs: None)
    journal = finished["journal"]
    start = journal.rfind(b"\n", 0, len(journal) - 1) + 1
    assert json.loads(journal[start:])["kind"] == "result" and len(journal) - start > 100
    for offset in range(start, len(journal) + 1):
        folder = interrupted_copy(finished, tmp_path / f"cut{offset}", journal[:offset])
        reset_calls()
        _, summary = Run(finished["config"]).execute(folder, resume=True)
        assert CALLS["count"] == 0, offset                                     # nothing bought again
        assert summary["journal"]["answers_from_store"] == summary["queries"]["total"], offset
        assert summary["queries"] == finished["summary"]["queries"]
        assert torch.equal(torch.load(folder / "program.pt", weights_only=True)["theta"], finished["theta"]), offset
        assert (folder / JOURNAL).read_bytes() == journal, offset
        shutil.rmtree(folder)


def test_an_intent_without_answer_is_sent_again_once_under_its_key(finished, tmp_path):
    """Killed with the last call in flight: its intent is in the journal, its answer nowhere.
    The resume buys that call alone, again, and reports it as resent."""
    journal = finished["journal"]
    records, _ = read_journal(finished["run_dir"] / JOURNAL)
    last = records[-1]["key"]
    store = tmp_path / "store"
    shutil.copytree(finished["config"].train.answer_store, store)
    (store / last[:2] / f"{last}.npz").unlink()
    start = journal.rfind(b"\n", 0, len(journal) - 1) + 1            # the result record goes too
    folder = interrupted_copy(finished, tmp_path / "run", journal[:start])
    reset_calls()
    _, summary = Run(tiny_config(store)).execute(folder, resume=True)
    n = records[-2]["n"]
    assert records[-2] == {"kind": "intent", "key": last, "purpose": "test", "n": n}
    assert CALLS == {"count": 1, "examples": n}
    assert summary["journal"]["resent_after_interruption"] == {"calls": 1, "queries": n}
    assert summary["journal"]["answers_from_store"] == summary["queries"]["total"] - n
    after, _ = read_journal(folder / JOURNAL)
    assert after[:-2] == records[:-1] and [r["kind"] for r in after[-2:]] == ["intent", "result"]
    stored = (store / last[:2] / f"{last}.npz").read_bytes()
    assert after[-1] == {"kind": "result", "key": last, "digest": hashlib.sha256(stored).hexdigest()}
    assert torch.equal(torch.load(folder / "program.pt", weights_only=True)["theta"], finished["theta"])


# ---- torn and damaged lines ---------------------------------------------------------------
def line(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


INTENT = {"kind": "intent", "key": KEY_A, "purpose": "train", "n": 3}
RESULT = {"kind": "result", "key": KEY_A, "digest": KEY_B}


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / JOURNAL
    whole = line(INTENT) + line(RESULT)
    path.write_bytes(whole + line(INTENT)[:-7])                           # died mid-write
    records, complete = read_journal(path)
    assert records == [INTENT, RESULT] and complete == len(whole)
    journal = Journal(path)
    assert journal.results == {KEY_A: KEY_B} and journal.lost == []
    journal.intent(KEY_B, "validate", 5)
    journal.close()
    assert path.read_bytes() == whole + line({"kind": "intent", "key": KEY_B, "purpose": "validate", "n": 5})
    records, complete = read_journal(path)
    assert len(records) == 3 and complete == path.stat().st_size
    assert Journal(path).lost == [records[-1]]                            # sent, never answered


@pytest.mark.parametrize("damage, number", [
    (lambda lines: lines.__setitem__(1, lines[1].replace(b'"result"', b'"resulT"')), 2),
    (lambda lines: lines.__setitem__(2, lines[2][:30] + b"\n"), 3),                   # cut, then a newline
    (lambda lines: lines.__setitem__(0, b"\n"), 1),                                   # an empty line
    (lambda lines: lines.__setitem__(4, lines[4].replace(b'"n":3', b'"n":0')), 5),
    (lambda lines: lines.__setitem__(3, lines[3].replace(b'"digest":"b', b'"digest":"B')), 4),
    (lambda lines: lines.__setitem__(5, lines[5][:-1] + b"x\n"), 6),                  # the last line, complete
])
def test_a_damaged_complete_line_is_an_error_naming_it(tmp_path, damage, number):
    lines = [line(INTENT), line(RESULT)] * 3
    damage(lines)
    assert lines != [line(INTENT), line(RESULT)] * 3
    path = tmp_path / JOURNAL
    path.write_bytes(b"".join(lines))
    with pytest.raises(JournalError, match=f"expected an intent, retry, result or failed record on line {number} of "):
        read_journal(path)
    with pytest.raises(JournalError, match=f"on line {number} of "):
        Journal(path)
    assert path.read_bytes() == b"".join(lines)                           # refused, nothing cut


def test_resume_refuses_a_damaged_journal_in_one_line_exit_2_before_any_query(finished, tmp_path):
    lines = finished["journal"].splitlines(keepends=True)
    number = len(lines) // 2
    lines[number - 1] = lines[number - 1].replace(b'"key":"', b'"key":"!')
    folder = interrupted_copy(finished, tmp_path / "run", b"".join(lines))
    reset_calls()
    result = CliRunner().invoke(main, ["resume", str(folder), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: expected an intent, retry, result or failed record on line {number} of "
                                    f"{folder / JOURNAL}, got ")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert CALLS["examples"] == 0
    assert (folder / JOURNAL).read_bytes() == b"".join(lines)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.toml", JOURNAL]


def test_a_journal_with_an_unknown_record_is_refused_in_one_line_without_a_progress_bar(finished, tmp_path):
    """Without --quiet: the bar is drawn at the first step, so a journal refused while the run
    starts leaves one line on stderr, not a bar's line before it."""
    lines = finished["journal"].splitlines(keepends=True)
    lines.insert(3, b'{"kind":"refund","key":"' + b"c" * 64 + b'"}\n')
    folder = interrupted_copy(finished, tmp_path / "run", b"".join(lines))
    reset_calls()
    result = CliRunner().invoke(main, ["resume", str(folder)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: expected an intent, retry, result or failed record on line 4 of ")
    assert result.stderr.count("\n") == 1 and "%|" not in result.stderr
    assert CALLS["examples"] == 0


# ---- property tests -------------------------------------------------------------------------
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
records = st.one_of(
    st.builds(lambda k, p, n: {"kind": "intent", "key": k, "purpose": p, "n": n},
              hex64, st.sampled_from(["probe", "train", "label-map", "validate", "test"]),
              st.integers(1, 10_000)),
    st.builds(lambda k, d: {"kind": "result", "key": k, "digest": d}, hex64, hex64))


def corrupt(data: bytes, draw) -> bytes:
    """One random damage: flip, delete, insert, overwrite or cut."""
    kind = draw(st.sampled_from(["flip", "delete", "insert", "overwrite", "cut"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip" and data:
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if kind == "delete":
        return data[:at] + data[at + 1:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "overwrite":
        piece = draw(st.sampled_from([b"\n", b"{", b"}", b'"', b"\\", b"\x00", b"\xff", b"null", b"1e999",
                                      b"9" * 5000, b"[" * 5000, b'"n":true', b'"n":-1']))
        return data[:at] + piece + data[at + len(piece):]
    return data[:at]


def check_read(path) -> list[dict] | None:
    """read_journal returns valid records or raises JournalError — nothing else."""
    try:
        found, complete = read_journal(path)
    except JournalError as error:
        assert "on line " in str(error)
        return None
    raw = path.read_bytes()
    assert 0 <= complete <= len(raw) and b"\n" not in raw[complete:]
    for record in found:
        assert record["kind"] in ("intent", "result") and len(record["key"]) == 64
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_read_journal_on_arbitrary_bytes_returns_records_or_raises_journal_error(tmp_path, data):
    path = tmp_path / JOURNAL
    path.write_bytes(data)
    check_read(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=st.lists(records, min_size=1, max_size=6), damages=st.integers(0, 3), data=st.data())
def test_read_journal_on_damaged_records_returns_records_or_raises_journal_error(tmp_path, written, damages, data):
    raw = b"".join(line(r) for r in written)
    for _ in range(damages):
        raw = corrupt(raw, data.draw)
    path = tmp_path / JOURNAL
    path.write_bytes(raw)
    found = check_read(path)
    if damages == 0:
        assert found == written


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=st.lists(records, min_size=1, max_size=6), data=st.data())
def test_a_journal_cut_anywhere_reads_as_its_complete_lines(tmp_path, written, data):
    """A torn tail (any cut) is never an error: the records read are the whole lines before it."""
    lines = [line(r) for r in written]
    raw = b"".join(lines)
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path / JOURNAL
    path.write_bytes(raw[:cut])
    whole = sum(1 for i in range(len(lines)) if len(b"".join(lines[:i + 1])) <= cut)
    assert read_journal(path) == (written[:whole], len(b"".join(lines[:whole])))


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


VALID = npz(kind=np.array("logits"), num_classes=np.array(4), scores=np.zeros((2, 4), np.float32))
SPECIAL = [
    b"", VALID[:len(VALID) // 2], b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b"\x93NUMPY",
    (lambda b: (np.save(b, np.zeros(3)), b.getvalue())[1])(io.BytesIO()),                      # an .npy
    npz(kind=np.array("logits"), num_classes=np.array([3, 4]), scores=np.zeros((2, 4))),     # two class counts
    npz(kind=np.array(["logits", "probs"]), num_classes=np.array(4), scores=np.zeros((2, 4))),
    npz(kind=np.array("logits"), num_classes=np.array(4)),                                   # no scores
    npz(kind=np.array("topk"), num_classes=np.array(4), scores=np.zeros((2, 2))),            # no labels
    npz(kind=np.array("label"), num_classes=np.array(4), labels=np.zeros(2, np.int64)),      # 1-D labels
    npz(kind=np.array("logits"), num_classes=np.array("x"), scores=np.zeros((2, 4))),
    npz(scores=np.zeros((2, 4))),
]


@st.composite
def answer_files(draw):
    how = draw(st.sampled_from(["binary", "special", "flip", "prefix"]))
    if how == "binary":
        return draw(st.binary(max_size=600))
    if how == "special":
        return draw(st.sampled_from(SPECIAL))
    if how == "prefix":
        return draw(st.sampled_from([b"PK\x03\x04", b"\x93NUMPY\x01\x00", VALID[:40]])) + draw(st.binary(max_size=200))
    at = draw(st.integers(0, len(VALID) - 1))
    return VALID[:at] + bytes([VALID[at] ^ draw(st.integers(1, 255))]) + VALID[at + 1:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=answer_files())
def test_a_damaged_stored_answer_raises_journal_error_or_reads_as_a_prediction(tmp_path, data):
    store = AnswerStore(tmp_path / "answers")
    path = store.folder / KEY_A[:2] / f"{KEY_A}.npz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    try:
        answer = store.get(KEY_A)
    except JournalError:
        return
    assert isinstance(answer, Prediction) and answer.kind in OUTPUT_KINDS
    assert answer.top1().shape == (len(answer),)             # usable: it has the arrays its kind needs


@pytest.mark.parametrize("data", SPECIAL, ids=range(len(SPECIAL)))
def test_each_hand_made_damage_to_a_stored_answer_is_a_journal_error(tmp_path, data):
    """Not left to chance: empty, cut, a bare zip header, an .npy, arrays of the wrong shape or
    missing for their kind."""
    store = AnswerStore(tmp_path / "answers")
    path = store.folder / KEY_A[:2] / f"{KEY_A}.npz"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(JournalError, match=f"in {path}"):
        store.get(KEY_A)


@st.composite
def predictions(draw):
    kind = draw(st.sampled_from(OUTPUT_KINDS))
    rows, classes = draw(st.integers(1, 6)), draw(st.integers(2, 12))
    k = classes if kind in ("logits", "probs") else (1 if kind == "label" else draw(st.integers(1, classes)))
    any_float = hnp.arrays(draw(st.sampled_from([np.float32, np.float64])), (rows, k),
                           elements=st.floats(allow_nan=True, allow_infinity=True, width=32))
    labels = hnp.arrays(np.int64, (rows, k), elements=st.integers(0, classes - 1))
    scores = draw(any_float) if kind != "label" else None
    return Prediction(kind, classes, scores=scores, labels=draw(labels) if kind in ("topk", "label") else None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=predictions())
def test_a_stored_answer_reads_back_bit_for_bit(tmp_path, answer):
    store = AnswerStore(tmp_path / "answers")
    shutil.rmtree(store.folder / KEY_B[:2], ignore_errors=True)       # the folder outlives each example
    digest, ours = store.put(KEY_B, answer)
    assert ours and digest == hashlib.sha256((store.folder / KEY_B[:2] / f"{KEY_B}.npz").read_bytes()).hexdigest()
    back = store.get(KEY_B)
    assert (back.kind, back.num_classes) == (answer.kind, answer.num_classes)
    for mine, theirs in ((answer.scores, back.scores), (answer.labels, back.labels)):
        assert (mine is None) == (theirs is None)
        if mine is not None:      # bytes, not values: NaN payloads, -0.0 and the dtype survive
            assert (theirs.dtype, theirs.shape, theirs.tobytes()) == (mine.dtype, mine.shape, mine.tobytes())
    with zipfile.ZipFile(store.folder / KEY_B[:2] / f"{KEY_B}.npz") as stored:
        assert not any(name.endswith(".pkl") for name in stored.namelist())


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64, np.int32, np.uint8]),
                    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)),
       model=st.text(max_size=30), other=st.text(max_size=30), data=st.data())
def test_the_query_key_tells_apart_model_dtype_shape_and_bytes(x, model, other, data):
    key = query_key(model, x)
    assert key == query_key(model, x.copy()) == query_key(model, np.asfortranarray(x))   # same query, same key
    if other != model:
        assert query_key(other, x) != key
    raw = x.reshape(-1).view(np.uint8)
    assert query_key(model, raw.view(x.dtype).reshape(x.shape)) == key
    if x.dtype.itemsize > 1:                                       # the same bytes as another dtype
        assert query_key(model, raw) != key
    assert query_key(model, x.astype(x.dtype.newbyteorder())) != key or x.dtype.itemsize == 1
    if x.ndim > 1 or x.shape[0] > 1:                               # the same bytes, another shape
        assert query_key(model, x.reshape(-1) if x.ndim > 1 else x.reshape(1, -1)) != key
    flipped = raw.copy()
    at = data.draw(st.integers(0, len(flipped) - 1))
    flipped[at] ^= data.draw(st.integers(1, 255))
    assert query_key(model, flipped.view(x.dtype).reshape(x.shape)) != key


def test_identical_calls_in_one_batch_are_bought_once(tmp_path):
    """Two chunks with the same bytes: one intent, one result, one model call; the ledger
    books both (the repeat as answered from the store)."""
    from blackbox_reprog.run.journal import Journal, Recorder
    from blackbox_reprog.backends.ledger import Ledger
    backend = CallableBackend(signal_model, input_shape=(1024,), num_classes=32, max_batch=2)
    recorder = Recorder(backend, Journal(tmp_path / "journal.jsonl"), AnswerStore(tmp_path / "answers"))
    ledger = Ledger(backend, None)
    ledger.record_with(recorder)
    chunk = np.random.default_rng(0).normal(size=(2, 1024)).astype(np.float32)
    reset_calls()
    answer = ledger.query(np.concatenate([chunk, chunk, chunk[:1]]), "train")
    recorder.close()
    assert CALLS["count"] == 2                          # the (2,) chunk once, the (1,) chunk once
    np.testing.assert_array_equal(answer.scores[:2], answer.scores[2:4])
    assert ledger.summary()["train"]["queries"] == 5 and ledger.summary()["train"]["stored"] == 2
    records, _ = read_journal(tmp_path / "journal.jsonl")
    assert [r["kind"] for r in records] == ["intent", "result", "intent", "result"]


# ---- what earlier processes spent, and answers that do not hold up ------------------------------
def killed_with_a_call_in_flight(finished, tmp_path, purpose="train", retried=None):
    """The finished run as a process killed while buying its middle ``purpose`` call left it:
    the journal up to that call's intent, only the answers it recorded, in a store of its own;
    ``retried``: the index of an earlier intent that was sent twice (a retry record after it).
    Returns (folder, store, the lost intent)."""
    records, _ = read_journal(finished["run_dir"] / JOURNAL)
    calls = [i for i, r in enumerate(records) if r["kind"] == "intent" and r["purpose"] == purpose]
    cut = calls[len(calls) // 2]
    kept = records[:cut + 1]
    if retried is not None:
        sent = kept[retried]
        assert retried < cut and sent["kind"] == "intent"
        kept.insert(retried + 1, {"kind": "retry", "key": sent["key"], "purpose": sent["purpose"], "n": sent["n"]})
    store = tmp_path / "store"
    for record in kept:
        if record["kind"] == "result":
            path = Path(finished["config"].train.answer_store) / record["key"][:2] / f"{record['key']}.npz"
            (store / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, store / path.parent.name / path.name)
    folder = interrupted_copy(finished, tmp_path / "run", b"".join(line(r) for r in kept))
    return folder, store, records[cut]


@pytest.mark.parametrize("idempotent", [False, True])
def test_what_earlier_processes_sent_is_booked_on_resume(finished, tmp_path, monkeypatch, idempotent):
    """Killed in the test pass (unbudgeted, so the replay ends as before either way): the call
    lost in flight was possibly billed and is booked as retried unless the endpoint honours
    idempotency keys; a retry an earlier process journaled is booked either way (the live
    process booked it too)."""
    monkeypatch.setattr(CallableBackend, "capabilities", Capabilities(honours_idempotency=idempotent))
    records, _ = read_journal(finished["run_dir"] / JOURNAL)
    first_test = next(i for i, r in enumerate(records) if r["kind"] == "intent" and r["purpose"] == "test")
    folder, store, lost = killed_with_a_call_in_flight(finished, tmp_path, "test", retried=first_test)
    reset_calls()
    _, summary = Run(tiny_config(store)).execute(folder, resume=True)
    expected = records[first_test]["n"] + (0 if idempotent else lost["n"])
    assert summary["journal"]["earlier_attempts_booked"] == {
        "calls": 1 + (not idempotent), "queries": expected, "endpoint_honours_idempotency": idempotent}
    assert summary["retried_queries"] == expected
    final, _ = read_journal(folder / JOURNAL)
    assert sum(r["kind"] == "intent" and r["key"] == lost["key"] for r in final) == 2      # bought again once
    assert summary["queries"] == finished["summary"]["queries"]
    assert torch.equal(torch.load(folder / "program.pt", weights_only=True)["theta"], finished["theta"])


def test_a_call_lost_in_flight_counts_against_the_budget(finished, tmp_path):
    """Killed while buying a train call of an endpoint not known to honour idempotency keys:
    those examples were maybe billed, so the replay has that much less to spend (here it
    still fits: the uninterrupted run left exactly that much unspent)."""
    folder, store, lost = killed_with_a_call_in_flight(finished, tmp_path, "train")
    _, summary = Run(tiny_config(store)).execute(folder, resume=True)
    assert summary["retried_queries"] == lost["n"]
    assert summary["budgeted_queries"] == finished["summary"]["budgeted_queries"] + lost["n"] <= 400


def test_a_call_that_fails_is_journaled_as_failed_and_bought_again_on_resume(finished, tmp_path, monkeypatch):
    """The backend raises on its 20th call: the run stops with the error, the journal closes
    that intent with a failed record, and the resume buys that call again and finishes."""
    config = tiny_config(tmp_path / "store")
    (tmp_path / "run").mkdir()
    reset_calls()
    real = CallableBackend._predict

    def twentieth_fails(self, x):
        if CALLS["count"] == 19:
            CALLS["count"] += 1
            raise RuntimeError("the model crashed")
        return real(self, x)

    monkeypatch.setattr(CallableBackend, "_predict", twentieth_fails)
    with pytest.raises(RuntimeError, match="the model crashed"):
        Run(config).execute(tmp_path / "run")
    records, _ = read_journal(tmp_path / "run" / JOURNAL)
    assert records[-1] == {"kind": "failed", "key": records[-2]["key"], "error": "RuntimeError"}
    monkeypatch.setattr(CallableBackend, "_predict", real)
    _, summary = Run(load_config(tmp_path / "run" / "config.toml")).execute(tmp_path / "run", resume=True)
    assert summary["journal"]["failed_calls"] == 1
    assert summary["journal"]["earlier_attempts_booked"]["calls"] == 1     # the failed call: maybe billed
    assert summary["budgeted_queries"] <= 400


def test_a_stored_answer_changed_since_it_was_bought_is_refused_before_any_query(finished, tmp_path):
    folder, store, _ = killed_with_a_call_in_flight(finished, tmp_path)
    records, _ = read_journal(folder / JOURNAL)
    key = next(r["key"] for r in records if r["kind"] == "result")
    answer = AnswerStore(store).get(key)
    path = store / key[:2] / f"{key}.npz"
    path.unlink()
    AnswerStore(store).put(key, Prediction(answer.kind, answer.num_classes, scores=answer.scores + 1.0))
    reset_calls()
    with pytest.raises(JournalError, match=f"expected the stored answer {store / key[:2] / key}.npz to match its "
                                           "digest in the journal, got different bytes"):
        Run(tiny_config(store)).execute(folder, resume=True)
    assert CALLS["count"] == 0


def test_a_stored_answer_that_does_not_fit_the_backend_is_refused(tmp_path):
    """A shared store holds answers with no journal digest: they are checked like fresh ones."""
    from blackbox_reprog.run.journal import Recorder
    from blackbox_reprog.backends.ledger import Ledger
    backend = CallableBackend(signal_model, input_shape=(1024,), num_classes=32)
    x = np.zeros((2, 1024), np.float32)
    store = AnswerStore(tmp_path / "answers")
    store.put(query_key(backend.model_id, x), Prediction("logits", 31, scores=np.zeros((2, 31), np.float32)))
    ledger = Ledger(backend, None)
    ledger.record_with(Recorder(backend, Journal(tmp_path / JOURNAL), store))
    reset_calls()
    with pytest.raises(JournalError, match="to fit the backend, got: callable: expected 32 classes, got 31"):
        ledger.query(x, "train")
    assert CALLS["count"] == 0


def test_a_replay_that_drifts_from_the_interrupted_run_is_refused_before_buying(finished, tmp_path):
    """Resumed under another seed (as if the code had changed): the replay asks for a query
    the interrupted run never made while answers it bought are unread — refused, nothing bought."""
    folder, store, _ = killed_with_a_call_in_flight(finished, tmp_path)
    reset_calls()
    with pytest.raises(JournalError, match="got a new one while [0-9]+ of the answers it bought are unread"):
        Run(tiny_config(store, seed=4)).execute(folder, resume=True)
    assert CALLS["count"] == 0


def test_a_replay_that_misses_the_checkpoints_theta_is_refused_in_one_line_exit_2(finished, tmp_path):
    """checkpoint.pt is the replay's check: a replay reaching another θ at the saved step (here
    the checkpoint was altered) is refused with one sentence, every answer read back, none bought."""
    folder = interrupted_copy(finished, tmp_path / "run", finished["journal"])
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    saved["theta"] = saved["theta"] + 0.5
    torch.save(saved, folder / "checkpoint.pt")
    reset_calls()
    result = CliRunner().invoke(main, ["resume", str(folder), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: expected the replay to reach the checkpoint's θ at step {saved['step']}, got "
                             "another θ: the model's answers or the code changed since the run began\n")
    assert CALLS["examples"] == 0


def test_one_process_at_a_time_writes_a_journal(finished, tmp_path):
    """A second `bbreprog resume` on a folder whose journal is held is refused (exit 2)."""
    folder, _, _ = killed_with_a_call_in_flight(finished, tmp_path)
    held = Journal(folder / JOURNAL)
    try:
        with pytest.raises(JournalError, match=f"expected no other process writing {folder / JOURNAL}, got it locked"):
            Journal(folder / JOURNAL)
        outcome = CliRunner().invoke(main, ["resume", str(folder), "--quiet"])
        assert outcome.exit_code == 2 and "got it locked" in outcome.output
    finally:
        held.close()
    Journal(folder / JOURNAL).close()                       # released with its holder


def test_a_relative_answer_store_is_written_to_config_toml_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    Run(tiny_config("shared", max_steps=1)).execute(tmp_path / "run")
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.train.answer_store == str(tmp_path / "shared") and any((tmp_path / "shared").iterdir())


def test_a_shared_store_keeps_the_answer_stored_first(tmp_path):
    """Two runs sharing a store buy the same key at once, and the model answers a little
    differently the second time: the first answer stored stays (the first run's journal
    digest stays true) and the second run journals and uses that one too."""
    from blackbox_reprog.run.journal import Recorder
    store = AnswerStore(tmp_path / "answers")
    x = np.random.default_rng(0).normal(size=(2, 1024)).astype(np.float32)
    key = query_key("shared-model", x)
    first_digest, ours = store.put(key, Prediction("logits", 32, scores=signal_model(x)))
    assert ours
    drifting = CallableBackend(lambda batch: signal_model(batch) + 0.5, input_shape=(1024,), num_classes=32,
                               model_id="shared-model")
    recorder = Recorder(drifting, Journal(tmp_path / JOURNAL), store)
    answer = recorder._buy(key, x, "train", lambda *args, **kwargs: None)   # it looked before the other stored
    recorder.close()
    records, _ = read_journal(tmp_path / JOURNAL)
    assert records[-1] == {"kind": "result", "key": key, "digest": first_digest} == {
        "kind": "result", "key": key, "digest": store.digest(key)}
    np.testing.assert_array_equal(answer.scores, signal_model(x))
