"""The kill test (short form; benchmarks/kill_test.py is the long one): a run over HTTP against
a real metered server, SIGKILLed at random moments and resumed each time, ends exactly as an
uninterrupted run — same θ, same accuracy, billed exactly the same number of examples, every
answer in the journal once. Against a server that bills every request, what each killed
process left in flight is booked against the budget: the server never bills more than the
budget allows. The negative control, with the journal off, is billed more."""
import pytest
import torch

from tests.kill_support import journal_check, kill_and_resume, result, signal_server, theta, \
    train_uninterrupted, write_config

pytestmark = pytest.mark.slow           # full runs over HTTP, minutes in all

KILLS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config, run once without a kill, against its own fresh server."""
    base = tmp_path_factory.mktemp("reference")
    with signal_server() as server:
        run_dir = train_uninterrupted(write_config(base / "run.toml", server.url), base / "runs")
        billed = server.billing()["billed"]
    summary = result(run_dir)
    assert summary["stopped"] == "budget" and summary["steps"] == 40     # the budget binds, not max_steps
    assert billed == summary["queries"]["total"] - summary["journal"]["answers_from_store"]
    return {"billed": billed, "theta": theta(run_dir), "summary": summary}


def test_a_run_killed_at_random_moments_and_resumed_is_billed_exactly_once(tmp_path, reference):
    with signal_server() as server:
        outcome = kill_and_resume(write_config(tmp_path / "run.toml", server.url), tmp_path / "runs", server,
                                  kills=KILLS, seed=20240611, min_in_flight=1, buying=(0.0, 1.0), log=print)
        billed = server.billing()["billed"]
    summary, check = result(outcome.run_dir), journal_check(outcome.run_dir)
    resent = summary["journal"]["resent_after_interruption"]
    print(f"{len(outcome.kills)} kills ({outcome.kills_buying} while buying, {outcome.kills_in_flight} with calls "
          f"in flight) over {outcome.processes} processes in {outcome.seconds:.1f} s; billed {billed} "
          f"(uninterrupted {reference['billed']}); resent_after_interruption {resent}; the last process bought "
          f"{summary['queries']['total'] - summary['journal']['answers_from_store']} of "
          f"{summary['queries']['total']} queries; {check}")

    assert len(outcome.kills) >= KILLS and outcome.kills_in_flight >= 1
    assert torch.equal(theta(outcome.run_dir), reference["theta"])
    assert summary["test_accuracy"] == reference["summary"]["test_accuracy"]
    # the replay booked every answer read back like the query that bought it: same counts, same stop
    assert summary["queries"] == reference["summary"]["queries"]
    assert summary["steps"] == reference["summary"]["steps"]
    assert billed == reference["billed"]                                  # not one example billed twice
    # result.json reconciles the bill of every process: what the killed processes bought is not
    # counted as read back for free
    bill = summary["billing"]
    assert bill["possibly_billed"] == billed
    assert bill["bought_by_earlier_processes"] > 0
    assert bill["bought_by_earlier_processes"] + bill["read_back_not_bought"] == summary["journal"]["answers_from_store"]
    # every intent answered, every answer recorded once, stored, and stored as recorded
    assert check["results_twice"] == check["intents_without_result"] == check["results_without_intent"] == 0
    assert check["stored_without_result"] == check["results_without_answer"] == check["digest_mismatches"] == 0
    assert check["results"] == check["stored"] == reference["summary"]["journal"]["records"] // 2
    # each call a dead process left in flight without its answer was sent once more, and reported
    assert resent["calls"] == outcome.expected_resends
    assert summary["journal"]["answers_from_store"] > 0


def test_negative_control_without_the_journal_the_same_kills_are_billed_twice(tmp_path, reference):
    """No journal, no answer store, no idempotency key: each resume buys again what the dead
    process had bought. Kills land only after the process has bought something."""
    with signal_server() as server:
        outcome = kill_and_resume(write_config(tmp_path / "run.toml", server.url), tmp_path / "runs", server,
                                  kills=2, seed=7, extra=("--set", "train.journal=off"), p_anytime=0.0,
                                  buying=(0.5, 2.0), log=print)
        billed = server.billing()
    summary = result(outcome.run_dir)
    # what an uninterrupted run without a journal is billed: every query once (nothing read back)
    uninterrupted = reference["summary"]["queries"]["total"]
    print(f"journal off: {len(outcome.kills)} kills; billed {billed['billed']} against {uninterrupted} uninterrupted "
          f"({billed['billed'] - uninterrupted} billed twice)")
    assert len(outcome.kills) == 2 and outcome.kills_buying == 2
    assert "journal" not in summary and not (outcome.run_dir / "journal.jsonl").exists()
    assert billed["replayed"] == 0                        # no idempotency key was sent
    assert torch.equal(theta(outcome.run_dir), reference["theta"])     # the replay itself is still right
    assert summary["queries"] == reference["summary"]["queries"]
    assert billed["billed"] > uninterrupted               # the billing check fails without the journal


def test_against_a_server_billing_every_request_the_budget_holds_across_kills(tmp_path, reference):
    """No idempotency: each call a killed process left in flight was billed, and is billed
    again when resent. The resumes book those as retried, so the replays stop sooner and the
    server's bill stays within the budget (plus the unbudgeted test pass)."""
    with signal_server(idempotent=False) as server:
        config = write_config(tmp_path / "run.toml", server.url, idempotent=False)
        outcome = kill_and_resume(config, tmp_path / "runs", server, kills=4, seed=31, min_in_flight=2,
                                  p_anytime=0.0, buying=(0.0, 1.0), log=print)
        billed = server.billing()
    summary = result(outcome.run_dir)
    ledger, booked = summary["ledger"], summary["journal"]["earlier_attempts_booked"]
    print(f"billing every request: {len(outcome.kills)} kills, {outcome.kills_in_flight} with calls in flight; "
          f"billed {billed['billed']}; ledger {ledger['total']}; earlier attempts booked {booked}")
    assert billed["replayed"] == 0 and booked["endpoint_honours_idempotency"] is False
    assert outcome.kills_in_flight >= 2 and booked["queries"] > 0
    # every example the server billed was booked by the last process (read back, bought, or lost in flight)
    assert billed["billed"] <= ledger["total"]["queries"] + ledger["total"]["retried"]
    # a call booked as lost in flight may have been killed before it left: the bill is at most this
    assert billed["billed"] <= summary["billing"]["possibly_billed"]
    test_billed = ledger["test"]["queries"] + ledger["test"]["retried"]
    assert billed["billed"] - test_billed <= summary["budget"] == 3400
    assert summary["budgeted_queries"] <= 3400
