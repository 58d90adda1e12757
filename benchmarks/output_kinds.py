"""Train the demo pair through each kind of answer an API may give: logits, probs, top-5, label.

Same seed, same budget, same config; only the backend's answers are degraded (DegradedBackend).
Writes a markdown table to benchmarks/results/output_kinds.md.

    .venv/bin/python benchmarks/output_kinds.py [--budget 100000] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from blackbox_reprog.tools.cli import DEMO
from blackbox_reprog.run.config import load_config
from blackbox_reprog.run.runner import run

EVOLUTION = ("train.method=evolution", "transform.grid=32", "label_map.kind=frequency")
KINDS = [  # (answers, method, overrides)
    ("logits", "zeroth-order (demo)", ()),
    ("probs", "zeroth-order (demo)", ("backend.output=probs",)),
    ("top-5", "zeroth-order (demo)", ("backend.output=topk", "backend.k=5")),
    ("top-5", "DiagonalCMA, 32 points", ("backend.output=topk", "backend.k=5") + EVOLUTION),
    ("label", "zeroth-order (demo)", ("backend.output=label",)),
    ("label", "DiagonalCMA, 32 points", ("backend.output=label",) + EVOLUTION),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="extra", action="append", default=[])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for label, method, overrides in KINDS:
            config = load_config(base=DEMO, overrides=overrides + tuple(args.extra),
                                 budget=args.budget, seed=args.seed, out=out)
            _, s = run(config)
            rows.append(f"| {label} | {method} | {s['start_accuracy']:.3f} | {s['test_accuracy']:.3f} | "
                        f"{s['queries']['total'] - s['queries']['test']:,} | {s['steps']} | {s['wall_seconds']:.0f} |")
            print(rows[-1], flush=True)
    extra = " ".join(f"--set {e}" for e in args.extra)
    table = "\n".join([
        f"# Output kinds: CREPE-tiny → ItalyPowerDemand (demo config, seed {args.seed}, budget {args.budget:,})",
        "",
        f"Command: `.venv/bin/python benchmarks/output_kinds.py --budget {args.budget} --seed {args.seed} {extra}`".rstrip() + "",
        "",
        "| answers | method | zero program (test) | trained (test) | queries (budgeted) | steps | seconds |",
        "|---|---|---|---|---|---|---|",
        *rows, ""])
    path = Path(__file__).parent / "results" / "output_kinds.md"
    path.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
