"""Would a fresh refit of the linear head at the chosen program pay for its queries?

During training, a refitting head (`label_map.refit = true`) is fitted to each training example's
*latest* answers: answers bought at several recent programs, not at the one finally chosen. This
script takes finished runs (e.g. the image suite's `zo-linear` cells), buys the whole training
split's answers at the chosen program, refits the head on them, and compares validation and test
accuracy with the head the run kept. The refit would cost one query per training example.

    .venv/bin/python benchmarks/fresh_refit.py benchmarks/results/image_128px/cells/*/zo-linear/*
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from blackbox_reprog import data as data_module
from blackbox_reprog.program.label_maps import target_accuracy
from blackbox_reprog.backends.ledger import Ledger
from blackbox_reprog.run.program import load_program


def compare(run_dir: Path) -> dict:
    program = load_program(run_dir)
    config = program.config
    splits = data_module.make_splits(config.data.name, validation_fraction=config.data.validation_fraction,
                                     test_fraction=config.data.test_fraction, seed=config.seed)
    ledger = Ledger(program.backend, None)
    train, validation, test = (program.source_log_probs(s.x, ledger, "test")
                               for s in (splits.train, splits.validation, splits.test))

    def accuracies() -> tuple[float, float]:
        return (target_accuracy(program.label_map(validation), torch.as_tensor(splits.validation.y)),
                target_accuracy(program.label_map(test), torch.as_tensor(splits.test.y)))

    kept = accuracies()
    program.label_map.fit(train, torch.as_tensor(splits.train.y))
    fresh = accuracies()
    return {"run": str(run_dir), "train": len(splits.train), "kept": kept, "fresh": fresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with program.pt)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fresh_refit.md")
    args = parser.parse_args()
    rows = [compare(run) for run in args.runs]
    lines = [
        "# A fresh refit of the head at the chosen program", "",
        f"{datetime.date.today().isoformat()}, {platform.node()}, python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        f"Command: `{shlex.join(['.venv/bin/python', 'benchmarks/fresh_refit.py', *sys.argv[1:]])}`.", "",
        "Kept: the head the run chose (fitted to each example's latest answers). Fresh: refitted to "
        "the whole training split's answers at the chosen θ, which costs one query per training example.", "",
        "| run | fresh refit costs (queries) | validation, kept → fresh | test, kept → fresh | test change (points) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        (kv, kt), (fv, ft) = row["kept"], row["fresh"]
        lines.append(f"| {row['run']} | {row['train']:,} | {kv:.3f} → {fv:.3f} | {kt:.3f} → {ft:.3f} | "
                     f"{100 * (ft - kt):+.1f} |")
    changes = [100 * (r["fresh"][1] - r["kept"][1]) for r in rows]
    lines += ["", f"Test change over {len(rows)} runs: mean {np.mean(changes):+.2f} points, "
              f"from {min(changes):+.1f} to {max(changes):+.1f}.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
