"""Query-budget benchmarks: ``bbreprog bench SUITE.toml``.

A suite answers one question — for a given number of paid queries, which method gives the
best target accuracy, and is reprogramming worth it against the cheap baselines? It names
source → target *pairs*, *methods*, *budgets* and *seeds*; every (pair, method, budget,
seed) is one *cell*, a run of its own in ``OUT/cells/``. Baselines that do not train a
program (``baseline = "zero"``: the map fitted to the zero program; ``baseline =
"scratch"``: a small network trained on the target data, no query) do not depend on the
budget and run once per seed.

A suite file::

    name = "signal"
    budgets = [1_000, 10_000, 100_000]
    seeds = [0, 1, 2]
    [base]                                # every cell's config starts from this
    backend = { name = "onnx", model = "crepe-tiny" }
    transform = { kind = "signal", grid = 64 }
    [pairs.Coffee]                        # config keys, dotted
    data.name = "Coffee"
    [methods.linear-head]
    label = "linear head, zero program"
    baseline = "zero"
    label_map.kind = "linear"
    [methods.zo-random]
    estimator.kind = "random"

A pair may say ``requires = "/path"`` (and ``install = "how"``): when the path is absent its
cells are skipped, and the report says why. Each finished cell writes ``cell.json`` with a
digest of its config; running the suite again skips those, so a half-finished suite resumes
(a cell whose config changed runs again). ``cells/`` is not committed, but ``results.json``
lists the finished cells: in a fresh clone their ``cell.json`` are written back from it, so
running more cells there keeps the committed results. Results: ``results.json``,
``results.md`` and one ``<pair>.png`` of test accuracy (mean ± std over seeds) against queries.
"""
from .cells import (  # noqa: F401  (the public names of the three modules, as before the split)
    cell_digest, failed, finished_record, restore_recorded_cells, run_cell, run_suite, write_cell_record)
from .results import (  # noqa: F401
    accuracy_text, against_bounds, best_black_box, cell_commands, command_line, headline, machine, markdown,
    plot_pair, summarise, white_box_bound, write_results)
from .suite import (  # noqa: F401
    BASELINES, EXECUTORS, Cell, Method, Pair, Suite, SuiteError, check_suite, load_suite, restricted)
