"""Fixtures shared by test modules."""
import pytest

from tests.mlserver_support import run_mlserver


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory):
    """One MLServer (a real third-party V2 server on 127.0.0.1) for every module that needs it."""
    with run_mlserver(tmp_path_factory.mktemp("mlserver")) as server:
        yield server
