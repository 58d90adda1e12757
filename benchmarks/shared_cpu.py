"""Processes sharing the CPU: how many images a second do they get together, with onnxruntime's
default thread count (every core, each) against one thread each (what a bench worker sets
through OMP_NUM_THREADS)? One process alone at the default is the reference.

Every process runs the zoo's efficientnet-lite0-128 on calls of 21 images (the CPU default
call size at 128 px) for the same number of seconds; the settings take turns, round after
round, so the shared machine's noise hits them alike. Writes benchmarks/results/shared_cpu.md.

    .venv/bin/python benchmarks/shared_cpu.py [--seconds 15] [--rounds 2]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

# One worker: prints the images a second it managed. Run as `python shared_cpu.py --worker T S`.
WORKER_CALL = 21


def worker(threads: int, seconds: float) -> None:
    import time

    import numpy as np
    import onnxruntime as ort

    from blackbox_reprog import zoo

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(zoo.model_path("efficientnet-lite0-128")), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((WORKER_CALL, 3, 128, 128), dtype=np.float32)  # (21, 3, 128, 128)
    session.run(None, {name: x})                                # warm-up, not timed
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {name: x})
        images += WORKER_CALL
    print(images / (time.perf_counter() - started))


def together(processes: int, threads: int, seconds: float) -> list[float]:
    """Start ``processes`` workers at once; the images a second of each."""
    command = [sys.executable, __file__, "--worker", str(threads), str(seconds)]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(p.communicate()[0]) for p in running]


SETTINGS = [  # (label, processes, threads)
    ("1 process, onnxruntime's default threads (alone)", 1, 0),
    ("2 processes, onnxruntime's default threads each", 2, 0),
    ("2 processes, 1 thread each (bench workers, OMP_NUM_THREADS=1)", 2, 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), float(args.worker[1]))
        return
    totals = {label: [] for label, _, _ in SETTINGS}
    for _ in range(args.rounds):
        for label, processes, threads in SETTINGS:
            totals[label].append(sum(together(processes, threads, args.seconds)))
    reference = sum(totals[SETTINGS[0][0]]) / args.rounds
    lines = [
        "# Processes sharing the CPU (onnxruntime threads)", "",
        f"{datetime.date.today().isoformat()}, {platform.node()} ({platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs), python {platform.python_version()}.",
        f"Command: `{shlex.join(['.venv/bin/python', 'benchmarks/shared_cpu.py', *sys.argv[1:]])}`. "
        f"efficientnet-lite0-128, calls of {WORKER_CALL} images, {args.seconds:g} s a process, "
        f"{args.rounds} rounds (settings in turn); images a second of all processes together, mean over rounds.", "",
        "| setting | images/s, together | against one process alone |", "|---|---|---|",
    ]
    for label, _, _ in SETTINGS:
        mean = sum(totals[label]) / args.rounds
        lines.append(f"| {label} | {mean:.0f} | {mean / reference:.2f} |")
    lines += ["", "onnxruntime ignores OMP_NUM_THREADS and by default takes every core in every process; "
              "the onnx backend's `threads = 0` therefore reads OMP_NUM_THREADS, which each "
              "`bbreprog bench` worker sets to its share of the cores.", ""]
    out = Path(__file__).parent / "results" / "shared_cpu.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
