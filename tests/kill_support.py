"""The kill test's machinery, shared by tests/test_kill_resume.py (short form) and
benchmarks/kill_test.py (long form).

A real metered server (``ModelServer`` around ``signal_model``, billing each idempotency key
once) answers a run started with ``bbreprog train``; the process is SIGKILLed at a random
moment, resumed with ``bbreprog resume``, killed again, … until a resume finishes. Each kill is
drawn from a seeded ``random.Random``: either *anytime* (a delay after the process started:
it may land in start-up, in the replay of answers already paid for, or while buying) or
*buying* (a delay after the process's first request reached the server: it lands while calls
are bought, often with some in flight). After each kill the journal is read to count the
calls the dead process left in flight.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blackbox_reprog.backends.base import CallableBackend
from blackbox_reprog.run.journal import ANSWERS, JOURNAL, read_journal
from blackbox_reprog.serve import ModelServer
from tests.models import signal_model

BBREPROG = str(Path(sys.executable).with_name("bbreprog"))
NAME = "kill"                       # the run folder's name under --out


def signal_server(idempotent: bool = True) -> ModelServer:
    """A metered server of the fast signal model; ``idempotent``: it bills each Idempotency-Key
    once (else every request)."""
    backend = CallableBackend(signal_model, input_shape=(1024,), num_classes=32, value_range=(-10.0, 10.0))
    return ModelServer(backend, name="sig", idempotent=idempotent)


def write_config(path: Path, url: str, *, budget: int = 3400, max_steps: int = 100, seed: int = 0,
                 idempotent: bool = True) -> Path:
    """A run over HTTP against ``url``: ItalyPowerDemand, grid 16, frequency map, random
    estimator (population 5 × batch 16 = 80 queries a step). The budget binds (40 steps),
    so the replay of a resumed run must count answers read back exactly as the ones bought.
    ``idempotent``: the config declares that the endpoint bills a resent key once."""
    path.write_text(
        f'budget = {budget}\nseed = {seed}\nname = "{NAME}"\n'
        f'[backend]\nname = "http"\nmodel = "{url}"\n'
        '[backend.options]\nprotocol = "v2"\nmodel_name = "sig"\ninput_shape = [1024]\nnum_classes = 32\n'
        f'value_range = [-10.0, 10.0]\noutput_kind = "logits"\nidempotent = {str(idempotent).lower()}\n'
        '[data]\nname = "ItalyPowerDemand"\n'
        '[transform]\nkind = "signal"\ngrid = 16\n'
        '[label_map]\nkind = "frequency"\nper_class = 4\n'
        '[estimator]\nkind = "random"\ndirections = 4\n'
        f'[train]\nbatch_size = 16\neval_every = 5\ncheckpoint_every = 5\nmax_steps = {max_steps}\n')
    return path


def theta(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "program.pt", weights_only=True)["theta"]


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def train_uninterrupted(config: Path, out: Path, *extra: str, timeout: float = 300) -> Path:
    """``bbreprog train`` to the end, no kill: the reference."""
    done = subprocess.run([BBREPROG, "train", str(config), "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"expected the reference run to exit 0, got {done.returncode}: {done.stderr[-2000:]}")
    return out / NAME


@dataclass
class Kill:
    process: int            # 0: the first `train`, then each `resume`
    mode: str               # "anytime" (after the start) or "buying" (after its first request)
    delay: float            # the seconds drawn
    at: float               # seconds after the process started when it was killed
    buying: bool            # it had sent a request when it died
    in_flight: int = 0      # intents it wrote with no result when it died
    unstored: int = 0       # of those, with no answer in the store: a later process resends them


@dataclass
class Outcome:
    run_dir: Path
    kills: list[Kill] = field(default_factory=list)
    processes: int = 0
    restarts: int = 0       # killed before its run folder had config.toml: started again with `train`
    seconds: float = 0.0
    output: str = ""        # the finishing process's stdout

    @property
    def kills_buying(self) -> int:
        return sum(k.buying for k in self.kills)

    @property
    def kills_in_flight(self) -> int:
        return sum(k.in_flight > 0 for k in self.kills)

    @property
    def expected_resends(self) -> int:
        """Calls a later process had to send again: each intent left open without a stored
        answer is resent exactly once by the next process that reaches it."""
        return sum(k.unstored for k in self.kills)


def _activity(server: ModelServer) -> int:
    bill = server.billing()
    return bill["requests"] + bill["replayed"]


def kill_and_resume(config: Path, out: Path, server: ModelServer, *, kills: int, seed: int,
                    extra: tuple[str, ...] = (), min_in_flight: int = 0, anytime: tuple[float, float] = (0.5, 6.0),
                    buying: tuple[float, float] = (0.0, 1.5), p_anytime: float = 0.3,
                    max_processes: int | None = None, timeout: float = 300, log=None) -> Outcome:
    """Start ``bbreprog train config --out out``; SIGKILL it at a random moment; ``bbreprog
    resume`` the run folder; kill again; … Once ``kills`` kills have hit a live process (and
    ``min_in_flight`` of them left a call in flight), the last resume runs to the end.
    ``extra`` goes to ``train`` (e.g. ``--set train.journal=off``). Raises if a process exits
    with anything but 0 or SIGKILL."""
    rng = random.Random(seed)
    run_dir = out / NAME
    journal = run_dir / JOURNAL
    outcome = Outcome(run_dir)
    max_processes = max_processes or 4 * kills + 10
    logs = out.parent / f"{out.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        if (run_dir / "config.toml").is_file():
            command = [BBREPROG, "resume", str(run_dir), "--quiet"]
        else:                               # killed before the folder held its config: nothing was bought
            if outcome.processes:
                outcome.restarts += 1
            shutil.rmtree(run_dir, ignore_errors=True)
            command = [BBREPROG, "train", str(config), "--out", str(out), "--quiet", *extra]
        enough = ((len(outcome.kills) >= kills and outcome.kills_in_flight >= min_in_flight)
                  or outcome.processes + 1 >= max_processes)
        before = len(read_journal(journal)[0]) if journal.exists() else 0
        stdout, stderr = logs / f"{outcome.processes}.out", logs / f"{outcome.processes}.err"
        with open(stdout, "w") as out_file, open(stderr, "w") as err_file:
            process = subprocess.Popen(command, stdout=out_file, stderr=err_file)
        t0 = time.monotonic()
        index = outcome.processes
        outcome.processes += 1
        if enough:                          # let it finish
            code = process.wait(timeout=timeout)
            _check_exit(code, command, stderr)
            outcome.output = stdout.read_text()
            break
        mode = "anytime" if rng.random() < p_anytime else "buying"
        delay = rng.uniform(*(anytime if mode == "anytime" else buying))
        time.sleep(0.5)                     # no process imports torch this fast: what the server sees now is older
        active = _activity(server)
        if mode == "anytime":
            deadline = t0 + delay
        else:
            while process.poll() is None and _activity(server) == active and time.monotonic() - t0 < timeout:
                time.sleep(0.002)
            deadline = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        was_buying = _activity(server) != active
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        code = process.wait(timeout=timeout)
        if code == -signal.SIGKILL:
            kill = Kill(index, mode, round(delay, 3), round(time.monotonic() - t0, 3), was_buying)
            if journal.exists():
                records, _ = read_journal(journal)
                answered = {r["key"] for r in records if r["kind"] == "result"}
                open_keys = [r["key"] for r in records[before:] if r["kind"] == "intent" and r["key"] not in answered]
                kill.in_flight = len(open_keys)
                kill.unstored = sum(not _stored(run_dir, key) for key in open_keys)
            outcome.kills.append(kill)
            if log:
                log(f"kill {len(outcome.kills)}: process {index} ({command[1]}) {mode} +{delay:.2f} s, "
                    f"died {kill.at:.2f} s after its start, buying={kill.buying}, in flight {kill.in_flight} "
                    f"({kill.unstored} unstored)")
            if (run_dir / "result.json").is_file():   # killed after it finished: resume would refuse it
                outcome.output = stdout.read_text()
                break
            continue
        _check_exit(code, command, stderr)  # it finished before the kill
        outcome.output = stdout.read_text()
        break
    outcome.seconds = time.monotonic() - started
    return outcome


def _check_exit(code: int, command: list[str], stderr: Path) -> None:
    if code != 0:
        raise RuntimeError(f"expected {' '.join(command[1:2])} to exit 0 or be killed, got {code}: "
                           f"{stderr.read_text()[-3000:]}")


def _stored(run_dir: Path, key: str) -> Path | None:
    path = run_dir / ANSWERS / key[:2] / f"{key}.npz"
    return path if path.exists() else None


def journal_check(run_dir: Path) -> dict:
    """What the final journal and answer store hold: every number here should be 0 except
    the counts of intents, results and stored answers."""
    records, complete = read_journal(run_dir / JOURNAL)
    intents = Counter(r["key"] for r in records if r["kind"] == "intent")
    results = Counter(r["key"] for r in records if r["kind"] == "result")
    digests = {r["key"]: r["digest"] for r in records if r["kind"] == "result"}
    files = [p for p in (run_dir / ANSWERS).rglob("*") if p.is_file()]
    stored = {p.stem: p for p in files if p.suffix == ".npz" and not p.name.startswith(".")}
    return {
        "intents": sum(intents.values()), "intent_keys": len(intents), "results": sum(results.values()),
        "stored": len(stored),
        "results_twice": sum(n > 1 for n in results.values()),
        "intents_without_result": sum(key not in results for key in intents),
        "results_without_intent": sum(key not in intents for key in results),
        "stored_without_result": sum(key not in results for key in stored),
        "results_without_answer": sum(key not in stored for key in results),
        "digest_mismatches": sum(hashlib.sha256(stored[k].read_bytes()).hexdigest() != d
                                 for k, d in digests.items() if k in stored),
        "torn_tail_bytes": (run_dir / JOURNAL).stat().st_size - complete,
        "temp_files_left": len(files) - len(stored),   # a kill inside atomic_write leaves its temp file
    }
