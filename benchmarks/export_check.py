"""Does an exported run predict what the toolkit predicts? For each finished run folder given:
the toolkit's own prediction of the run's test split (``bbreprog predict``'s code, one query per
example), then ``bbreprog export``'s ONNX file run by a bare onnxruntime session on the same
examples; labels must be identical and scores equal to float rounding. Writes
benchmarks/results/export_check.md; exits 1 if a run's labels differ.

    .venv/bin/python benchmarks/export_check.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blackbox_reprog.data import make_splits
from blackbox_reprog.tools.export import export_run
from blackbox_reprog.tools.predict import predict
from blackbox_reprog.run.program import load_program

RESULTS = Path(__file__).parent / "results" / "export_check.md"


def check(run_dir: Path, folder: Path) -> dict:
    program = load_program(run_dir)
    config = program.config
    try:
        test = make_splits(config.data.name, validation_fraction=config.data.validation_fraction,
                           test_fraction=config.data.test_fraction, seed=config.seed).test
        started = time.perf_counter()
        toolkit = predict(program, test.x)
        toolkit_seconds = time.perf_counter() - started
    finally:
        program.backend.close()

    import onnxruntime
    exported = folder / f"{run_dir.name}.onnx"
    export_run(run_dir, exported)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    parts = [session.run(None, {"x": test.x[i:i + 64].astype(np.float32)}) for i in range(0, len(test.x), 64)]
    onnx_seconds = time.perf_counter() - started
    scores = np.concatenate([p[0] for p in parts])              # (N, K)
    labels = np.concatenate([p[1] for p in parts])              # (N,)
    return {"run": str(run_dir), "model": config.backend.model, "data": config.data.name,
            "transform": config.transform.kind, "label_map": config.label_map.kind, "examples": len(test.x),
            "queries": toolkit.queries, "labels_equal": bool((labels == toolkit.label_index).all()),
            "differing_labels": int((labels != toolkit.label_index).sum()),
            "max_score_difference": float(np.abs(scores - toolkit.scores).max()),
            "accuracy": float((toolkit.label_index == test.y).mean()),
            "onnx_bytes": exported.stat().st_size,
            "toolkit_seconds": toolkit_seconds, "onnx_seconds": onnx_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [check(run, Path(folder)) for run in args.runs]
    lines = ["# Exported ONNX models against the toolkit's predictions", "",
             f"`.venv/bin/python benchmarks/export_check.py {' '.join(map(str, args.runs))}` — "
             f"{datetime.date.today().isoformat()}, {platform.node()} ({platform.machine()}, Python "
             f"{platform.python_version()}).", "",
             "Each run's test split predicted by the toolkit (`bbreprog predict`'s code, one query per example) "
             "and by its `bbreprog export` file in a bare onnxruntime session (CPU, batches of 64).", "",
             "| run | model → data | program, map | examples (queries) | labels equal | max score difference | "
             "test accuracy | .onnx size | toolkit / onnxruntime time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['run']}` | {r['model']} → {r['data']} | {r['transform']}, {r['label_map']} | "
                     f"{r['examples']:,} ({r['queries']:,}) | {'yes' if r['labels_equal'] else 'NO: ' + str(r['differing_labels'])} | "
                     f"{r['max_score_difference']:.1e} | {r['accuracy']:.4f} | {r['onnx_bytes'] / 2**20:.1f} MiB | "
                     f"{r['toolkit_seconds']:.1f} s / {r['onnx_seconds']:.1f} s |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["labels_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
