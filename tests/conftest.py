"""Fixtures shared by test modules."""
import pytest

from tests.mlserver_support import run_mlserver


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
