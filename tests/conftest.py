"""Fixtures shared by test modules, and one thread per library.

This machine has two cores. torch and onnxruntime each size their thread pools to every core,
and a test process, the servers it starts and the CLI processes it runs share those cores:
the pools oversubscribe them (test_trainer.py took 259 s with default threads and 22 s with
one, side by side). Tests pin both to one thread before anything imports them; processes the
tests start inherit OMP_NUM_THREADS, which the onnx plugin and torch both read. A value the
caller set is kept.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from pathlib import Path  # noqa: E402

from tests.mlserver_support import run_mlserver  # noqa: E402

SMOKE = Path(__file__).parents[1] / "benchmarks" / "suites" / "smoke.toml"


def pytest_collection_modifyitems(items):
    """A test that needs the smoke suite (minutes) is slow: `make check` leaves it out."""
    for item in items:
        if "smoke_suite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_suite(tmp_path_factory) -> tuple[Path, str]:
    """The smoke suite, run once a session from the CLI: tests/test_bench.py reads its folder,
    and docs/benchmarks.md's example resumes a copy of it (every cell finished: nothing runs
    twice). Returns the folder and what the command printed."""
    from click.testing import CliRunner

    from blackbox_reprog.tools.cli import main
    out = tmp_path_factory.mktemp("bench") / "smoke"
    result = CliRunner().invoke(main, ["bench", str(SMOKE), "--out", str(out), "--jobs", "2", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result.output


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory):
    """One MLServer (a real third-party V2 server on 127.0.0.1) for every module that needs it."""
    with run_mlserver(tmp_path_factory.mktemp("mlserver")) as server:
        yield server


@pytest.fixture
def counted(monkeypatch):
    """Examples that reach the ONNX model, counted below the ledger."""
    from bbreprog_onnx import OnnxBackend
    sent = {"examples": 0}
    original = OnnxBackend._predict

    def counting(self, x):
        sent["examples"] += len(x)
        return original(self, x)

    monkeypatch.setattr(OnnxBackend, "_predict", counting)
    return sent
