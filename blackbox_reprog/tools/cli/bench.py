"""bbreprog bench: a suite of cells, with one progress bar per running cell."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import fail, main


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Results folder [runs/bench-<suite name>].")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, help="Cells run at once [0: the number of CPUs].")
@click.option("--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True,
              help="process: a local process pool; serial: one cell after another in this process; "
                   "ray: each cell a Ray task (pip install 'blackbox-reprog[ray]').")
@click.option("--budgets", metavar="N,N,…", help="Only these budgets instead of the suite's (e.g. the smallest on a CPU).")
@click.option("--seeds", metavar="S,S,…", help="Only these seeds instead of the suite's.")
@click.option("--pairs", metavar="NAME,…", help="Only these pairs of the suite.")
@click.option("--methods", metavar="NAME,…", help="Only these methods of the suite.")
@click.option("--report", is_flag=True,
              help="Run no cell: write the results of the cells finished in OUT by earlier commands "
                   "(e.g. several restricted ones), the others marked 'not run'.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(suite_file, out, jobs, executor, budgets, seeds, pairs, methods, report, quiet):
    """Run a benchmark suite: every pair × method × budget × seed, resuming a half-finished
    one; writes results.md, results.json and a plot per pair into OUT."""
    from ...bench import SuiteError, check_suite, headline, load_suite, restricted, run_suite
    try:
        suite = restricted(load_suite(suite_file), budgets=budgets, seeds=seeds, pairs=pairs, methods=methods)
        check_suite(suite)
    except SuiteError as error:
        fail(str(error))
    folder = Path(out) if out else Path("runs") / f"bench-{suite.name}"
    progress = None if quiet or report else _BenchProgress(len(suite.cells()))
    try:
        results = run_suite(suite, folder, jobs=jobs, executor=executor,
                            on_event=progress.event if progress else None, report_only=report)
    except SuiteError as error:
        fail(str(error))
    finally:
        if progress:
            progress.close()
    click.echo(headline(results))
    count = {status: sum(c["status"] == status for c in results["cells"])
             for status in ("done", "skipped", "failed", "not run")}
    not_run = f", {count['not run']} not run" if count["not run"] else ""
    click.echo(f"{count['done']} cells done ({results['ran']} run now, {count['done'] - results['ran']} from an "
               f"earlier run), {count['skipped']} skipped, {count['failed']} failed{not_run}, in "
               f"{results['seconds']:.0f} s; results: {folder / 'results.md'}")
    if count["failed"]:
        failed = [f"{c['id']}: {c['reason']}" for c in results["cells"] if c["status"] == "failed"]
        more = f"; and {len(failed) - 3} more, listed in results.md" if len(failed) > 3 else ""
        fail(f"{count['failed']} cells failed ({'; '.join(failed[:3])}{more}); run the same command again to "
              "retry them", code=1)


class _BenchProgress:
    """A bar for the whole suite (cells) and one per running cell (queries of its budget)."""

    def __init__(self, cells: int):
        from tqdm import tqdm
        self._tqdm = tqdm
        self.suite = tqdm(total=cells, unit="cell", desc="suite", dynamic_ncols=True, file=sys.stderr, position=0)
        self.running: dict = {}

    def event(self, kind: str, cell_id: str, info: dict) -> None:
        if kind == "start":
            self.running[cell_id] = self._tqdm(total=None, unit="q", unit_scale=True, desc=cell_id, leave=False,
                                               dynamic_ncols=True, file=sys.stderr, position=len(self.running) + 1)
        elif kind == "progress" and cell_id in self.running:
            bar = self.running[cell_id]
            bar.total = info["budget"]
            bar.update(info["queries"] - bar.n)
        elif kind in ("done", "skipped", "failed", "resumed"):
            bar = self.running.pop(cell_id, None)
            if bar is not None:
                bar.close()
            self.suite.update(1)
            if kind == "done":
                self.suite.set_postfix_str(f"{cell_id}: {info['test_accuracy']:.3f}")

    def close(self) -> None:
        for bar in self.running.values():
            bar.close()
        self.suite.close()
