"""Carry committed benchmark results across a change of the config layout.

A finished cell is reused only while its ``config_digest`` (a hash of its resolved config,
``bench.cells.cell_digest``) matches what the code computes for that cell. When the layout of
the resolved config changes (0.3: a component section holds only its kind's parameters), every
digest changes although no result does. This script recomputes each suite's cell digests with
the code of an earlier commit (``--before``, checked out in a temporary git worktree) and with
the current code, and rewrites a record's digest only where it matched the earlier code's: a
record that was stale before stays stale. The earlier code is, for each results.json, that of
the commit that last wrote it (``--before`` overrides).

    .venv/bin/python benchmarks/migrate_digests.py

tests/test_bench.py checks that every committed finished cell reads with the current code.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

DIGESTS = """
import json, sys
from pathlib import Path
try:
    from blackbox_reprog.bench.cells import cell_digest
    from blackbox_reprog.bench.suite import Cell, load_suite
except ImportError:                      # before 0.2 bench was one module
    from blackbox_reprog.bench import Cell, cell_digest, load_suite
out = {}
for suite_path, records_path in zip(sys.argv[1::2], sys.argv[2::2]):
    suite = load_suite(suite_path)
    cells = [Cell(r["pair"], r["method"], r["budget"], r["seed"],       # as recorded (--budgets may restrict)
                  **{axis: r[axis] for axis in ("shots", "answers") if axis in r})
             for r in json.loads(Path(records_path).read_text())["cells"]]
    out[suite_path] = {cell.id: cell_digest(suite.config(cell, Path("/unused") / cell.id),
                                            suite.method(cell.method).baseline) for cell in cells}
print(json.dumps(out))
"""


def digests(suite_paths: list[str], code: Path) -> dict[str, dict[str, str]]:
    """{suite.toml path (relative to the repository): {cell id: digest}} computed by the package
    and the suite files found under ``code`` (a checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *(str(p) for p in (code / "plugins").glob("*"))])}
    records = [str(ROOT / Path(suite).with_name("results.json")) for suite in suite_paths]   # the ones to migrate
    # the suite file as the checkout has it, or today's where the checkout predates the folder
    readable = [suite if (code / suite).is_file() else str(ROOT / suite) for suite in suite_paths]
    arguments = [part for pair in zip(readable, records) for part in pair]
    done = subprocess.run([sys.executable, "-c", DIGESTS, *arguments], cwd=code, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"expected the code under {code} to compute digests, got:\n{done.stderr}")
    computed = json.loads(done.stdout)
    return {suite: computed[spelled] for suite, spelled in zip(suite_paths, readable)}


def last_commit(path: Path) -> str:
    return subprocess.run(["git", "log", "-1", "--format=%H", "--", str(path)], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the commit whose config layout wrote the digests "
                                          "(default: the last commit of each results.json)")
    args = parser.parse_args()
    folders = sorted(p.parent for p in RESULTS.rglob("results.json") if (p.parent / "suite.toml").is_file())
    suites = [str((folder / "suite.toml").relative_to(ROOT)) for folder in folders]
    writers = {suite: args.before or last_commit(ROOT / Path(suite).with_name("results.json")) for suite in suites}
    # a results.json never committed was written by the code at hand: nothing to carry
    suites = [suite for suite in suites if writers[suite]]
    writers = {suite: writers[suite] for suite in suites}
    folders = [ROOT / Path(suite).parent for suite in suites]
    old: dict[str, dict[str, str]] = {}
    for commit in sorted(set(writers.values())):
        with tempfile.TemporaryDirectory() as tmp:
            worktree = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), commit], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                old.update(digests([s for s in suites if writers[s] == commit], worktree))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    new = digests(suites, ROOT)
    for folder, suite in zip(folders, suites):
        path = folder / "results.json"
        results = json.loads(path.read_text())
        moved = stale = 0
        for record in results.get("cells", []):
            cell = record.get("id")
            if record.get("status") != "done" or cell not in new[suite]:
                continue
            if record.get("config_digest") == old[suite].get(cell):
                record["config_digest"] = new[suite][cell]
                moved += 1
            elif record.get("config_digest") != new[suite][cell]:
                stale += 1
        path.write_text(json.dumps(results, indent=1) + "\n")     # as bench writes it
        print(f"{path.relative_to(ROOT)}: {moved} digests carried over, {stale} stale before and left as they were")


if __name__ == "__main__":
    main()
