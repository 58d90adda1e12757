"""Run a real MLServer (Seldon's Open Inference Protocol / KServe V2 server) for tests.

MLServer lives in its own virtual environment, ``.venv/mlserver/`` beside the toolkit's
``.venv``: mlserver 1.7.1 pins ``protobuf<7`` and (through tritonclient) ``ml-dtypes<=0.5.4``,
which would downgrade the protobuf and ml-dtypes that onnx uses in the main environment.
That venv pins numpy, scipy, scikit-learn and joblib to the main venv's versions, so a model
fitted and dumped here loads there unchanged.

``run_mlserver(workdir)`` fits LogisticRegression(max_iter=2000) on the digits set
(64 float features, 10 classes), dumps it with joblib, writes settings.json and the
model-settings.json files, starts ``mlserver start`` on free 127.0.0.1 ports in its own
process group, waits until the server and the model are ready, yields a ``RunningMLServer``,
and stops the whole process group on exit.

Nothing listens beyond loopback: REST and gRPC bind to ``host`` = 127.0.0.1 (gRPC cannot be
switched off, so it gets a free loopback port as well), the metrics server is switched off
with ``metrics_endpoint: null``, ``parallel_workers: 0`` keeps inference in the main process
(no worker processes; MLServer 1.7.1's workers also crash at start under uvloop>=0.22), and
Kafka stays off.

Where MLServer is missing the tests are skipped, except under CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest

MODEL_NAME = "digits"
VERSIONED_MODEL_NAME = "digits-versioned"   # the same model served with version "1"
MODEL_VERSION = "1"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class RunningMLServer(NamedTuple):
    base_url: str            # http://127.0.0.1:PORT, no trailing slash
    model: Any               # the fitted LogisticRegression that the server serves
    startup_s: float         # from process start until server and models were ready
    grpc_port: int
    log_path: Path
    process: subprocess.Popen


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail under CI, so CI can't skip silently."""
    if _in_ci():
        pytest.fail(f"MLServer conformance tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("MLSERVER_EXECUTABLE"):
        found.append(Path(os.environ["MLSERVER_EXECUTABLE"]))
    found.append(Path(sys.prefix) / "mlserver" / "bin" / "mlserver")   # .venv/mlserver/bin
    found.append(Path(sys.executable).parent / "mlserver")               # same venv as pytest
    return found


def find_mlserver() -> Path:
    """The ``mlserver`` executable, or skip (fail under CI) with the places looked at."""
    candidates = _candidates()
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            _check_sklearn_matches(path)
            return path
    _unavailable(
        "mlserver is not installed: looked for "
        + ", ".join(str(p) for p in candidates)
        + " (`make install` creates .venv/mlserver; or set MLSERVER_EXECUTABLE)"
    )
    raise AssertionError("unreachable")


def _check_sklearn_matches(executable: Path) -> None:
    """The server must unpickle our model with the scikit-learn version that fitted it."""
    import sklearn

    venv = executable.resolve().parent.parent if executable.parent.name == "bin" else None
    if venv is None or venv == Path(sys.prefix).resolve():
        return
    dists = sorted(venv.glob("lib/python*/site-packages/scikit_learn-*.dist-info"))
    if not dists:
        _unavailable(f"mlserver at {executable} has no scikit-learn (install mlserver-sklearn)")
    theirs = dists[-1].name[len("scikit_learn-"):-len(".dist-info")]
    if theirs != sklearn.__version__:
        _unavailable(
            f"scikit-learn differs: {sklearn.__version__} here, {theirs} in {venv}; "
            "reinstall the MLServer venv pinned to this one"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_digits_model():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    return LogisticRegression(max_iter=2000).fit(X, y)


def write_repository(root: Path, model, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """settings.json at ``root`` and one folder per model with model-settings.json."""
    import joblib

    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,            # gRPC always starts; keep it on loopback too
        "metrics_port": metrics_port,      # unused while metrics_endpoint is null
        "metrics_endpoint": None,          # no metrics server, no Prometheus middleware
        "parallel_workers": 0,             # inference in the main process, no workers
        "kafka_enabled": False,
        "tracing_server": None,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, version in ((MODEL_NAME, None), (VERSIONED_MODEL_NAME, MODEL_VERSION)):
        folder = root / name
        folder.mkdir(exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        parameters = {"uri": "./model.joblib"}
        if version is not None:
            parameters["version"] = version
        model_settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": parameters,
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    pgid = process.pid   # start_new_session=True: the server leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(STOP_TIMEOUT_S)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_mlserver(workdir: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[RunningMLServer]:
    """Serve the digits model from ``workdir`` with a real MLServer; stop it on exit."""
    executable = find_mlserver()
    model = fit_digits_model()
    workdir = Path(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    env["PYTHONUNBUFFERED"] = "1"

    last_error = ""
    for attempt in range(3):   # a free port can be taken between picking and binding
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        root = workdir / f"mlserver-{attempt}"
        write_repository(root, model, http_port, grpc_port, metrics_port)
        base_url = f"http://127.0.0.1:{http_port}"
        log_path = root / "mlserver.log"
        with open(log_path, "wb") as log:
            started = time.monotonic()
            process = subprocess.Popen(
                [str(executable), "start", str(root)],
                cwd=root,                      # .env, .envs/ and .metrics/ are looked up here
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,        # own process group: stopped as a whole
            )
        try:
            ready = False
            while time.monotonic() - started < timeout_s and process.poll() is None:
                # The server's own readiness alone is not enough: a model that failed to
                # load is dropped from the registry and the server then reports ready.
                if (_status(base_url + "/v2/health/ready") == 200
                        and _status(f"{base_url}/v2/models/{MODEL_NAME}/ready") == 200
                        and _status(f"{base_url}/v2/models/{VERSIONED_MODEL_NAME}"
                                    f"/versions/{MODEL_VERSION}/ready") == 200):
                    ready = True
                    break
                time.sleep(0.05)
            startup_s = time.monotonic() - started
            if ready and process.poll() is None:
                yield RunningMLServer(base_url, model, startup_s, grpc_port, log_path, process)
                return
            tail = _log_tail(log_path)
            if process.poll() is not None and "address already in use" in tail.lower():
                last_error = tail
                continue
            raise RuntimeError(
                f"MLServer did not become ready within {timeout_s:.0f} s "
                f"(exit code {process.poll()}); last log lines:\n{tail}"
            )
        finally:
            _stop(process)
    raise RuntimeError(f"MLServer could not bind free ports in 3 tries:\n{last_error}")
