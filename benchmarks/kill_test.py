"""The kill test, long form (tests/test_kill_resume.py is the short one run in CI).

A run over HTTP against a real metered server (``ModelServer`` around a fast signal model,
billing each Idempotency-Key once) is started with ``bbreprog train``, SIGKILLed at random
moments (``--kills`` of them hitting a live process, at least ``--in-flight`` with calls in
flight) and resumed with ``bbreprog resume`` after each, until a resume finishes. It must end
as an uninterrupted run of the same config: θ equal, test accuracy equal, billed exactly the
same, every intent in the journal answered, every answer recorded once. The negative control
(``--set train.journal=off``: no journal, no store, no idempotency key) is killed
``--control-kills`` times while buying and must be billed more. A third leg runs against a
server that bills every request (no idempotency, declared so in the config), killed
``--billing-kills`` times while buying: the calls each dead process left in flight are
booked on resume, so the server's bill stays within the budget. Writes a markdown report to
benchmarks/results/kill_test.md; exits 1 if a check fails.

    .venv/bin/python benchmarks/kill_test.py [--kills 20] [--seed 1] [--budget 12000]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests.kill_support, tests.models
from tests.kill_support import journal_check, kill_and_resume, result, signal_server, theta, \
    train_uninterrupted, write_config as write_run_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills that must hit a live process")
    parser.add_argument("--in-flight", type=int, default=5, help="of those, kills that must leave calls in flight")
    parser.add_argument("--control-kills", type=int, default=3, help="kills of the negative control")
    parser.add_argument("--billing-kills", type=int, default=10, help="kills against a server billing every request")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    parser.add_argument("--budget", type=int, default=12_000, help="queries of the run (80 a step); it binds")
    parser.add_argument("--buying", type=float, default=1.0, help="a buying kill lands 0 to this many s after the first request")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kill_test.md"))
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/kill_test.py", *sys.argv[1:]])
    settings = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")

    def write_config(path: Path, url: str, **options) -> Path:        # the budget binds, not max_steps
        return write_run_config(path, url, budget=args.budget, max_steps=100_000, **options)

    with tempfile.TemporaryDirectory(prefix="kill-test-") as folder:
        base = Path(folder)
        started = time.monotonic()
        with signal_server() as server:
            reference_dir = train_uninterrupted(write_config(base / "ref.toml", server.url),
                                                base / "reference")
            reference_billed = server.billing()["billed"]
        reference, reference_theta = result(reference_dir), theta(reference_dir)
        reference_seconds = time.monotonic() - started
        print(f"uninterrupted: {reference['steps']} steps ({reference['stopped']}), billed {reference_billed}, "
              f"{reference_seconds:.1f} s")

        with signal_server() as server:
            killed = kill_and_resume(write_config(base / "run.toml", server.url), base / "killed",
                                     server, kills=args.kills, seed=args.seed, min_in_flight=args.in_flight,
                                     buying=(0.0, args.buying), log=print)
            killed_bill = server.billing()
        summary, check = result(killed.run_dir), journal_check(killed.run_dir)
        killed_theta = theta(killed.run_dir)

        with signal_server() as server:
            control = kill_and_resume(write_config(base / "control.toml", server.url),
                                      base / "control", server, kills=args.control_kills, seed=args.seed + 1,
                                      extra=("--set", "train.journal=off"), p_anytime=0.0, buying=(0.5, 2.0),
                                      log=print)
            control_bill = server.billing()
        control_summary, control_theta = result(control.run_dir), theta(control.run_dir)

        with signal_server(idempotent=False) as server:
            billing = kill_and_resume(write_config(base / "billing.toml", server.url,
                                                   idempotent=False),
                                      base / "billing", server, kills=args.billing_kills, seed=args.seed + 2,
                                      min_in_flight=args.billing_kills // 2, p_anytime=0.0,
                                      buying=(0.0, args.buying), log=print)
            billing_bill = server.billing()
        billing_summary = result(billing.run_dir)

    resent = summary["journal"]["resent_after_interruption"]
    uninterrupted_off = reference["queries"]["total"]          # without a journal every query is bought
    checks = {
        f"kills hitting a live process >= {args.kills}": len(killed.kills) >= args.kills,
        f"kills with calls in flight >= {args.in_flight}": killed.kills_in_flight >= args.in_flight,
        "θ equal to the uninterrupted run (torch.equal)": torch.equal(killed_theta, reference_theta),
        "test accuracy equal": summary["test_accuracy"] == reference["test_accuracy"],
        "queries booked equal (per purpose)": summary["queries"] == reference["queries"],
        "billed == uninterrupted billed": killed_bill["billed"] == reference_billed,
        "every intent has a result; each result once": (check["intents_without_result"] == 0
                                                        and check["results_twice"] == 0
                                                        and check["results_without_intent"] == 0),
        "every result's answer stored, digest matching; no stored answer unrecorded": (
            check["results_without_answer"] == check["digest_mismatches"] == check["stored_without_result"] == 0),
        "resent_after_interruption == calls left in flight unstored": resent["calls"] == killed.expected_resends,
        "control: θ equal all the same": torch.equal(control_theta, reference_theta),
        "control: billed > uninterrupted (the check fails without the journal)":
            control_bill["billed"] > uninterrupted_off,
    }
    ledger = billing_summary["ledger"]
    billing_test = ledger["test"]["queries"] + ledger["test"]["retried"]
    booked = billing_summary["journal"]["earlier_attempts_booked"]
    checks.update({
        "billing every request: billed, less the test pass, <= budget":
            billing_bill["billed"] - billing_test <= args.budget,
        "billing every request: billed <= examples booked by the last process":
            billing_bill["billed"] <= ledger["total"]["queries"] + ledger["total"]["retried"],
    })
    for name, ok in checks.items():
        print(f"{'ok ' if ok else 'FAIL'} {name}")

    modes = {m: sum(k.mode == m for k in killed.kills) for m in ("anytime", "buying")}
    rows = "\n".join(
        f"| {i} | {k.process} | {k.mode} | {k.delay:.2f} | {k.at:.2f} | {'yes' if k.buying else 'no'} | "
        f"{k.in_flight} | {k.unstored} |" for i, k in enumerate(killed.kills, 1))
    report = f"""# Kill test: a run SIGKILLed at random moments, resumed each time

`{command}` ({settings}) — {datetime.date.today().isoformat()}, {platform.node()} ({platform.machine()}, {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}).

The run: ItalyPowerDemand through the HTTP backend (V2, 4 requests in flight, 64 examples a request) against an
in-process `ModelServer` around `tests.models.signal_model` with `idempotent=True` (each Idempotency-Key billed once);
grid 16, frequency map, random estimator (80 queries a step), budget {args.budget:,}. Each kill is drawn from
`random.Random({args.seed})`: *anytime* (0.5–6 s after the process started: start-up, replay or buying) or *buying*
(0–{args.buying:g} s after its first request reached the server). The kill loop is `tests/kill_support.py`.

| | uninterrupted | killed and resumed |
|---|---|---|
| processes | 1 | {killed.processes} ({len(killed.kills)} SIGKILLs hit a live process: {modes['anytime']} anytime, {modes['buying']} while buying; {killed.restarts} before the run folder held its config) |
| kills with calls in flight | – | {killed.kills_in_flight} |
| steps, stopped | {reference['steps']}, {reference['stopped']} | {summary['steps']}, {summary['stopped']} |
| queries booked (budgeted + test) | {reference['queries']['total']:,} | {summary['queries']['total']:,} (the last process bought {summary['queries']['total'] - summary['journal']['answers_from_store']:,}) |
| **billed by the server** | **{reference_billed:,}** | **{killed_bill['billed']:,}** |
| answers the server replayed for a resent key | 0 | {killed_bill['replayed']:,} examples |
| resent_after_interruption (result.json) | {reference['journal']['resent_after_interruption']} | {resent} (expected from the journal after each kill: {killed.expected_resends} calls) |
| journal: intents / results / stored answers | {reference['journal']['records'] // 2} / {reference['journal']['records'] // 2} / – | {check['intents']} / {check['results']} / {check['stored']} |
| intents without result, results twice, digest mismatches | – | {check['intents_without_result']}, {check['results_twice']}, {check['digest_mismatches']} |
| temp files left by kills inside a write | – | {check['temp_files_left']} |
| test accuracy | {reference['test_accuracy']:.4f} | {summary['test_accuracy']:.4f} |
| θ equal (`torch.equal`) | | **{'yes' if torch.equal(killed_theta, reference_theta) else 'NO'}** |
| wall time | {reference_seconds:.1f} s (with start-up) | {killed.seconds:.1f} s |

Negative control, `--set train.journal=off` (no journal, no answer store, no Idempotency-Key), the same config,
killed {len(control.kills)} times 0.5–2 s after each process's first request: billed **{control_bill['billed']:,}**
against {uninterrupted_off:,} for an uninterrupted run without a journal (every query bought once) — **{control_bill['billed'] - uninterrupted_off:,}
examples billed twice**; θ {'equal' if torch.equal(control_theta, reference_theta) else 'NOT equal'} all the same
(the replay is right, only the bill differs); {control.processes} processes, {control.seconds:.1f} s.

Against a server that **bills every request** (`idempotent=False`; the config says `idempotent = false`), the
same config killed {len(billing.kills)} times 0–{args.buying:g} s after each process's first request
({billing.kills_in_flight} kills with calls in flight): the resumes booked {booked['calls']} earlier calls /
{booked['queries']:,} examples (in flight when a process died) as retried before replaying, so the replay had that
much less to spend: {billing_summary['steps']} steps ({billing_summary['stopped']}) instead of {reference['steps']};
billed **{billing_bill['billed']:,}** = {billing_bill['billed'] - billing_test:,} budgeted + {billing_test:,} for the
unbudgeted test pass, within the budget of {args.budget:,}; the last process booked
{ledger['total']['queries'] + ledger['total']['retried']:,} examples in all (≥ billed: a kill between an intent and
its request is booked though never billed).

Checks: {'all passed' if all(checks.values()) else 'FAILED: ' + ', '.join(n for n, ok in checks.items() if not ok)}.

<details><summary>Each kill</summary>

| kill | process | mode | delay (s) | died after (s) | buying | intents in flight | of them unstored |
|---|---|---|---|---|---|---|---|
{rows}

</details>
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"wrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
