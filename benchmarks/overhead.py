"""The toolkit's overhead, measured side by side in one run, and peak memory.

1. Black-box: queries per second of a full zeroth-order training step (perturb θ, build the
   programs' inputs, the ledger, the ONNX call, the map, the loss, the estimate, the Adam
   step) against raw ``onnxruntime`` inference of the very same input batches (made once,
   beforehand). The ratio is what the toolkit costs on top of the model.
2. White-box: one autograd training step (transform, torch model forward + backward to θ,
   map, loss, Adam) against a bare torch forward + backward of the same model on the same
   batches, with the input as the leaf.
3. Peak resident memory (VmHWM) of a process running a few steps of each configuration,
   the largest (DiagonalCMA on EfficientNet-Lite0 at 224 px: 640 images a step) included.

Rounds alternate the two sides so the shared machine's noise hits both alike.

    .venv/bin/python benchmarks/overhead.py [--rounds 5] [--steps 4]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from blackbox_reprog.tools.cli import DEMO
from blackbox_reprog.run.config import load_config
from blackbox_reprog.run.runner import build

IMAGE = {   # the default image model at its full 224 px canvas
    "budget": 10_000_000, "backend": {"name": "onnx", "model": "efficientnet-lite0"},
    "data": {"name": "digits"}, "transform": {"kind": "frame", "grid": 8},
    "label_map": {"kind": "frequency", "per_class": 10},
    "estimator": {"kind": "random", "directions": 10, "smoothing": 0.01},
    "train": {"batch_size": 32}}
# the largest: DiagonalCMA's population of 20 × batch 32 = 640 images of 224 px a step
IMAGE_CMA = {**IMAGE, "train": {"batch_size": 32, "method": "evolution"},
             "evolution": {"optimizer": "DiagonalCMA", "popsize": 20}}
IMAGE_WHITEBOX = {**IMAGE, "train": {"batch_size": 32, "method": "whitebox"}}
# the image default of benchmarks/suites/image.toml (zo-linear) at 128 px
IMAGE_128 = {**IMAGE, "backend": {"name": "onnx", "model": "efficientnet-lite0-128"},
             "label_map": {"kind": "linear", "refit": True, "refit_every": 10},
             "estimator": {"kind": "antithetic", "directions": 2, "smoothing": 0.01}, "train": {"batch_size": 16}}


def components(base: dict, method: str = "blackbox"):
    config = load_config(base={**base, "budget": 10_000_000, "train": {**base.get("train", {}), "method": method}})
    built = build(config)
    built.trainer.label_map.fit(torch.zeros(8, built.backend.num_classes).log_softmax(-1),
                                torch.arange(8) % built.splits.train.num_classes)   # any fitted map: its cost is tiny
    return built


def batches(trainer, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = torch.as_tensor(trainer.train_set.x), torch.as_tensor(trainer.train_set.y)
    for _ in range(steps):
        index = rng.choice(len(x), trainer.batch_size, replace=len(x) < trainer.batch_size)
        yield x[index], y[index]


def blackbox_side_by_side(base: dict, rounds: int, steps: int, raw_batch: int = 0) -> dict:
    """``raw_batch``: the raw side sends calls of this many examples instead of the backend's."""
    built = components(base)
    trainer, backend = built.trainer, built.backend
    call_size = raw_batch or backend.max_batch
    work = list(batches(trainer, steps))
    # the raw side: exactly the inputs the steps send, made once (the first step's θ perturbations)
    raw_inputs = []
    for xb, _ in work:
        thetas = trainer.search.estimator.propose(trainer.theta.detach(), torch.Generator().manual_seed(0)).thetas
        with torch.no_grad():
            inputs = trainer.transform(thetas, xb)                            # (P, B, *source)
        flat = inputs.reshape(-1, *inputs.shape[2:]).numpy().astype(np.float32)
        raw_inputs.append([flat[i:i + call_size] for i in range(0, len(flat), call_size)])
    queries = sum(sum(len(c) for c in chunks) for chunks in raw_inputs)
    toolkit, raw = [], []
    trainer.step(*work[0])                                     # warm both paths once
    backend.session.run(None, {backend.input_name: raw_inputs[0][0]})
    for _ in range(rounds):
        started = time.perf_counter()
        for xb, yb in work:
            trainer.step(xb, yb)
        toolkit.append(queries / (time.perf_counter() - started))
        started = time.perf_counter()
        for chunks in raw_inputs:
            for chunk in chunks:
                backend.session.run(None, {backend.input_name: chunk})
        raw.append(queries / (time.perf_counter() - started))
    backend.close()
    return {"model": backend.model_id[:24], "queries_per_round": queries, "population": trainer.search.population,
            "batch": trainer.batch_size, "max_batch": backend.max_batch, "raw_call": call_size,
            "toolkit_qps": toolkit, "raw_qps": raw}


def whitebox_side_by_side(base: dict, rounds: int, steps: int) -> dict:
    built = components(base, "whitebox")
    trainer, backend = built.trainer, built.backend
    work = list(batches(trainer, steps))
    module = backend.module
    sources = []
    for xb, _ in work:
        with torch.no_grad():
            sources.append(trainer.transform(trainer.theta.detach()[None], xb)[0].clone())   # (B, *source)
    examples = sum(len(xb) for xb, _ in work)
    toolkit, bare = [], []
    trainer.step(*work[0])
    for _ in range(rounds):
        started = time.perf_counter()
        for xb, yb in work:
            trainer.step(xb, yb)
        toolkit.append(examples / (time.perf_counter() - started))
        started = time.perf_counter()
        for source in sources:
            leaf = source.clone().requires_grad_(True)
            module(leaf).logsumexp(dim=-1).sum().backward()
        bare.append(examples / (time.perf_counter() - started))
    backend.close()
    return {"examples_per_round": examples, "batch": trainer.batch_size, "toolkit_eps": toolkit, "bare_eps": bare}


def peak_memory(name: str, steps: int) -> float:
    """MiB: a fresh process builds the configuration and runs ``steps`` training steps."""
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import overhead; base = overhead.CONFIGS[{name!r}]; "
            f"built = overhead.components(base, base['train'].get('method', 'blackbox')); "
            f"[built.trainer.step(xb, yb) for xb, yb in overhead.batches(built.trainer, {steps})]; "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


CONFIGS = {"signal (demo: CREPE-tiny, q = 20, batch 64)": DEMO,
           "image (EfficientNet-Lite0 224 px, frame, q = 10, batch 32)": IMAGE,
           "image (EfficientNet-Lite0 224 px, DiagonalCMA, population 20 × batch 32)": IMAGE_CMA,
           "image (EfficientNet-Lite0 224 px, white-box, batch 32)": IMAGE_WHITEBOX,
           "image default (EfficientNet-Lite0 128 px, antithetic q = 2, batch 16, linear head)": IMAGE_128}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="training steps a round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.md"))
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/overhead.py", *sys.argv[1:]])
    signal = blackbox_side_by_side(DEMO, args.rounds, args.steps)
    whitebox = whitebox_side_by_side(DEMO, args.rounds, args.steps)
    image = blackbox_side_by_side(IMAGE, max(3, args.rounds // 2), 1)
    image_256 = blackbox_side_by_side(IMAGE, max(3, args.rounds // 2), 1, raw_batch=256)
    image_128 = blackbox_side_by_side(IMAGE_128, max(3, args.rounds // 2), 4)
    image_whitebox = whitebox_side_by_side(IMAGE_WHITEBOX, max(3, args.rounds // 2), 1)
    memory = {name: peak_memory(name, 2) for name in CONFIGS}
    median = lambda values: float(np.median(values))                                     # noqa: E731
    rows = [
        ("black-box ZO step, CREPE-tiny (q/s)", signal["toolkit_qps"], signal["raw_qps"], "raw onnxruntime, same inputs"),
        ("black-box ZO step, EfficientNet-Lite0 224 px (q/s)", image["toolkit_qps"], image["raw_qps"],
         "raw onnxruntime, same inputs"),
        ("black-box ZO step, EfficientNet-Lite0 224 px, against calls of 256 (q/s)", image_256["toolkit_qps"],
         image_256["raw_qps"], "raw onnxruntime, same inputs in calls of 256, the default until 2026-11-29"),
        ("black-box image default step, EfficientNet-Lite0 128 px (q/s)", image_128["toolkit_qps"],
         image_128["raw_qps"], "raw onnxruntime, same inputs"),
        ("white-box step, CREPE-tiny (examples/s)", whitebox["toolkit_eps"], whitebox["bare_eps"],
         "bare torch forward + backward"),
        ("white-box step, EfficientNet-Lite0 224 px, batch 32 (examples/s)", image_whitebox["toolkit_eps"],
         image_whitebox["bare_eps"], "bare torch forward + backward of the whole batch at once"),
    ]
    table = "\n".join(f"| {name} | {median(ours):,.0f} | {median(theirs):,.0f} ({what}) | {median(ours) / median(theirs):.2f} |"
                      for name, ours, theirs, what in rows)
    memory_rows = "\n".join(f"| {name} | {mib:,.0f} MiB |" for name, mib in memory.items())
    torch_version, threads = torch.__version__, torch.get_num_threads()
    report = f"""# Overhead of a training step, and peak memory

`{command}` — {datetime.date.today().isoformat()}, {platform.node()} ({platform.machine()}, {platform.system()}, Python {platform.python_version()}, torch {torch_version}, {threads} torch threads; onnxruntime default threads).

Medians of alternating rounds ({args.rounds} for CREPE-tiny, {max(3, args.rounds // 2)} for EfficientNet-Lite0; {args.steps} steps a round for CREPE-tiny: {signal['queries_per_round']:,} queries,
population {signal['population']} × batch {signal['batch']}; 1 step a round for EfficientNet-Lite0 224 px: {image['queries_per_round']:,} queries,
the toolkit in calls of {image['max_batch']} (`local_max_batch`); 4 steps a round at 128 px: {image_128['queries_per_round']:,} queries in calls of {image_128['max_batch']}).
The ratio is toolkit ÷ raw: 1.00 would mean the toolkit adds nothing to the model's own time; above 1, the toolkit's
calls are faster than the raw side's (smaller calls on a CPU, and a white-box batch in chunks of {image['max_batch']}).

| what | toolkit | the model alone | ratio |
|---|---|---|---|
{table}

Peak resident memory of a fresh process that builds the configuration and runs 2 training steps:

| configuration | peak RSS |
|---|---|
{memory_rows}

<details><summary>Every round</summary>

```json
{json.dumps({"signal": signal, "image": image, "image_calls_of_256": image_256, "image_128": image_128,
             "whitebox": whitebox, "image_whitebox": image_whitebox}, indent=1)}
```

</details>
"""
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
