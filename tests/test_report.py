"""bbreprog report on a real short run of the demo pair (CREPE-tiny → ItalyPowerDemand), on
that run's folder cut back to an unfinished one, and on a hand-made frame-program folder."""
import hashlib
import io
import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from blackbox_reprog.tools.cli import DEMO, main
from blackbox_reprog.run.config import load_config, to_toml
from blackbox_reprog.run.runner import Run

FIGURES = {"report-curves.png", "report-program.png"}


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short demo run: 2,000 queries, batch 16 so that θ and the iterative map both move."""
    out = tmp_path_factory.mktemp("runs")
    config = load_config(base=DEMO, budget=2000, seed=0, out=str(out),
                         overrides=["train.batch_size=16", "train.eval_every=2", 'name="demo"'])
    run_dir, summary = Run(config).execute()
    return run_dir


@pytest.fixture
def no_model(monkeypatch, counted):
    """Building a backend fails, and examples that reach the ONNX model are counted: the
    report must need neither."""
    import blackbox_reprog.backends.registry
    import blackbox_reprog.run.runner

    def refuse(*args, **kwargs):
        raise AssertionError("the report built a backend")

    for module in (blackbox_reprog.backends.registry, blackbox_reprog.run.runner):
        monkeypatch.setattr(module, "create_backend", refuse)
    return counted


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def table(page: str, heading: str) -> dict[str, list[str]]:
    """The first table under ``## heading``: its first column → the other cells."""
    section = page.split(f"## {heading}\n", 1)[1]
    rows = re.findall(r"^\| (.*) \|$", section.split("\n\n## ", 1)[0], re.M)
    cells = [[c.strip() for c in row.split(" | ")] for row in rows[1:]]      # after the header (the rule has no space)
    return {c[0]: c[1:] for c in cells}


def number(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


def assert_png(path, size=None):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert size is None or image.size == size


def test_the_report_describes_the_run_and_spends_nothing(finished, no_model):
    before = digests(finished)
    result = invoke("report", finished)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"wrote {finished / 'report.md'} (figures in {finished}: "
                             "report-curves.png, report-program.png)\n")
    assert no_model["examples"] == 0
    after = digests(finished)
    assert set(after) - set(before) == {"report.md", *FIGURES}
    assert {name: after[name] for name in before} == before          # nothing else was touched

    summary = json.loads((finished / "result.json").read_text())
    page = (finished / "report.md").read_text()
    queries = table(page, "Queries")
    ledger = summary["ledger"]
    assert list(queries) == ["train", "label-map", "validate", "test", "total"]   # no probe on a local model
    for purpose, cells in queries.items():
        tally = ledger[purpose]
        assert [number(cells[0]), number(cells[2]), number(cells[3]), number(cells[4])] == \
            [tally["queries"], tally["stored"], tally["retried"], tally["calls"]]
        assert tally["queries"] == summary["queries"][purpose]
    assert [queries[p][1] for p in ("train", "label-map", "validate", "test")] == ["yes", "yes", "yes", "no"]
    assert number(queries["total"][1]) == summary["budgeted_queries"] == ledger["budgeted"]

    accuracy = table(page, "Accuracy")
    assert accuracy["zero program, test (label map as first fitted)"] == [f"{summary['start_accuracy']:.3f}"]
    assert accuracy["trained program, test"] == [f"{summary['test_accuracy']:.3f}"]
    best = f"best validation (step {summary['best_step']}, loss {summary['best_validation_loss']:.3f})"
    assert accuracy[best] == [f"{summary['best_validation_accuracy']:.3f}"]
    assert accuracy["majority class, test"] == [f"{summary['chance_accuracy']:.3f}"]

    run = table(page, "The run")
    assert run["seed"] == ["0"] and run["steps"] == [f"{summary['steps']}; stopped: {summary['stopped']}"]
    assert summary["backend"]["model_id"] in run["model"][0] and "crepe-tiny" in run["model"][0]
    assert "<details><summary>config.toml" in page and (finished / "config.toml").read_text().strip() in page

    saved = torch.load(finished / "program.pt", weights_only=True)
    mapped = table(page, "The label map")
    assert list(mapped) == saved["classes"]
    for index, name in enumerate(saved["classes"]):
        sources = torch.nonzero(saved["label_map"]["assignment"] == index).flatten().tolist()
        assert mapped[name] == [", ".join(map(str, sources)), str(len(sources))]   # 10 per class: all shown

    assert "![accuracy and loss against queries spent](report-curves.png)" in page
    assert "![the learned program](report-program.png)" in page
    for name in FIGURES:
        assert_png(finished / name)


def test_a_page_elsewhere_links_the_figures_in_the_run_folder(finished, no_model, tmp_path):
    page = tmp_path / "reports" / "demo.md"
    result = invoke("report", finished, "-o", page)
    assert result.exit_code == 0, result.output
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page.read_text())
    assert len(links) == 2
    assert {(page.parent / link).resolve() for link in links} == {(finished / n).resolve() for n in FIGURES}


def test_an_unfinished_run_gets_a_partial_report(finished, tmp_path):
    folder = tmp_path / "unfinished"
    folder.mkdir()
    for name in ("config.toml", "metrics.jsonl"):
        shutil.copy(finished / name, folder / name)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    with open(folder / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 99, "quer')                            # killed mid-write
    result = invoke("report", folder)
    assert result.exit_code == 0, result.output
    page = (folder / "report.md").read_text()
    assert "**Unfinished run:**" in page and "## Queries" not in page and "## Accuracy" not in page
    assert table(page, "The run")["steps so far"] == [f"{rows[-1]['step']} ({rows[-1]['queries']:,} budgeted queries spent)"]
    assert_png(folder / "report-curves.png")
    assert not (folder / "report-program.png").exists()


@pytest.mark.parametrize("damage, message", [
    ({}, "expected a run folder holding config.toml, got {folder}"),
    ({"config.toml": ""}, "expected a run folder with result.json or metrics.jsonl, got {folder}"),
    ({"config.toml": "", "result.json": "{"},
     "expected a readable result.json in {folder}, got one that fails to parse (Expecting property name "
     "enclosed in double quotes, line 1)"),
    ({"config.toml": "", "metrics.jsonl": "", "program.pt": saved({"theta": torch.zeros(3)})},
     "expected a readable program.pt in {folder}, got one that fails to load (KeyError)"),
])
def test_a_folder_that_is_not_a_run_is_refused_in_one_sentence(tmp_path, damage, message):
    for name, content in damage.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {message.format(folder=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(damage)          # nothing written


def test_a_frame_program_is_drawn_from_the_transform_alone(finished, no_model, tmp_path):
    """A hand-made folder: digits (1×8×8) framed on a 3×32×32 model that does not exist, so
    only the transform can have drawn it."""
    config = load_config(overrides=["data.name=digits", "backend.name=callable", "backend.model=nowhere:missing",
                                    "transform.kind=frame", "transform.grid=4", "transform.inner=16",
                                    "label_map.kind=linear"])
    (tmp_path / "config.toml").write_text(to_toml(config))
    summary = json.loads((finished / "result.json").read_text())
    summary.update(backend={"backend": "callable", "model_id": "hand-made", "output_kind": "logits",
                            "num_classes": 20, "input_shape": [3, 32, 32], "value_range": [0.0, 1.0]},
                   data={"name": "digits", "train": 1000, "validation": 250, "test": 547, "classes": 10},
                   program={"kind": "frame", "num_params": 48})
    (tmp_path / "result.json").write_text(json.dumps(summary))
    shutil.copy(finished / "metrics.jsonl", tmp_path / "metrics.jsonl")
    theta = torch.randn(48, generator=torch.Generator().manual_seed(0))           # (3 × 4 × 4,)
    head = {"mean": torch.zeros(20), "std": torch.ones(20), "weight": torch.zeros(20, 10), "bias": torch.zeros(10)}
    torch.save({"theta": theta, "label_map": head, "classes": [str(d) for d in range(10)]}, tmp_path / "program.pt")

    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.md").read_text()
    assert "θ has 48 parameters" in page
    assert "weights 20 × 10 and 10 biases (210 parameters)" in page
    assert_png(tmp_path / "report-program.png", size=(1152, 432))                 # three images side by side
