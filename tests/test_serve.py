"""The local model server: a real server on 127.0.0.1, real HTTP requests (urllib, no proxy)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blackbox_reprog.backends.base import CallableBackend
from blackbox_reprog.tools.cli import main
from blackbox_reprog.backends.degrade import degrade
from blackbox_reprog.backends.registry import create_backend
from blackbox_reprog.serve import ModelServer
from tests.models import signal_model

KEY = "test-key-7f3a9c"            # looked for in the CLI's output, where it must never appear
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # ignore http_proxy


def signal_backend():
    return CallableBackend(signal_model, input_shape=(1024,), num_classes=32, value_range=(-10.0, 10.0))


def batch(size, seed=0):
    return np.random.default_rng(seed).normal(size=(size, 1024)).astype(np.float32)


def call(url, path, body=None, headers=None, timeout=5.0):
    """(status, headers, raw body) of a GET, or of a POST when ``body`` is given."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                     **(headers or {})})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def v2_body(x, *, nested=False, datatype="FP32", request_id=None):
    tensor = {"name": "input", "shape": list(x.shape), "datatype": datatype,
              "data": x.tolist() if nested else x.ravel().tolist()}
    return {"inputs": [tensor], **({"id": request_id} if request_id else {})}


def infer(server, protocol, x, **kwargs):
    """POST x with one protocol; (status, headers, raw body)."""
    if protocol == "v2":
        return call(server.url, f"/v2/models/{server.name}/infer", v2_body(x), **kwargs)
    if protocol == "tf":
        return call(server.url, f"/v1/models/{server.name}:predict", {"instances": x.tolist()}, **kwargs)
    return call(server.url, "/invocations", {"inputs": x.tolist()}, **kwargs)


def decode(protocol, kind, raw):
    """(scores float32 or None, labels int64 or None) from an answer, as a client would."""
    payload = json.loads(raw)
    if protocol == "v2":
        out = {o["name"]: np.array(o["data"], dtype=np.float32 if o["datatype"].startswith("FP") else np.int64)
               .reshape(o["shape"]) for o in payload["outputs"]}
        return out.get("scores"), out.get("labels")
    p = payload["predictions"]
    if kind in ("logits", "probs"):
        return np.array(p, dtype=np.float32), None
    if kind == "topk":
        return (np.array([row["scores"] for row in p], dtype=np.float32),
                np.array([row["labels"] for row in p], dtype=np.int64))
    return None, np.array(p, dtype=np.int64)[:, None]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def crepe():
    backend = create_backend("onnx", "crepe-tiny")
    yield backend
    backend.close()


@pytest.mark.parametrize("output", ["", "probs", "topk", "label"])
def test_the_three_protocols_answer_bit_for_bit_what_the_backend_computes(output):
    backend = signal_backend()
    expected = degrade(backend, output, k=4).query(batch(3))
    with ModelServer(backend, name="signal", output=output, k=4) as server:
        for protocol in ("v2", "tf", "mlflow"):
            status, _, raw = infer(server, protocol, batch(3))
            assert status == 200, raw
            scores, labels = decode(protocol, expected.kind, raw)
            assert (scores is None) == (expected.scores is None) and (labels is None) == (expected.labels is None)
            if scores is not None:
                assert same_bits(scores, expected.scores)
            if labels is not None:
                assert np.array_equal(labels, expected.labels)
        assert server.billing()["billed"] == server.billing()["answered"] == 9


def test_crepe_tiny_over_v2_is_bit_identical_and_described(crepe):
    x = batch(4, seed=1)
    expected = crepe.query(x).scores
    with ModelServer(crepe, name="crepe-tiny", fp64=True) as server:
        status, _, raw = call(server.url, "/v2/models/crepe-tiny/versions/1/infer",
                              v2_body(x, nested=True, request_id="r-1"))
        assert status == 200
        answer = json.loads(raw)
        assert (answer["model_name"], answer["id"], answer["model_version"]) == ("crepe-tiny", "r-1", None)
        [scores] = answer["outputs"]
        assert scores["shape"] == [4, 360] and scores["datatype"] == "FP64"
        assert same_bits(np.array(scores["data"], np.float64).astype(np.float32).reshape(4, 360), expected)

        status, _, raw = call(server.url, "/v2/models/crepe-tiny")
        metadata = json.loads(raw)
        assert status == 200 and metadata["versions"] == ["1"] and metadata["platform"] == "blackbox-reprog"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1024]}]
        assert metadata["outputs"] == [{"name": "scores", "datatype": "FP64", "shape": [-1, 360]}]


def test_health_and_status_endpoints():
    with ModelServer(signal_backend(), name="signal") as server:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/signal/ready", "/ping", "/health"):
            assert call(server.url, path)[0] == 200, path
        status, _, raw = call(server.url, "/v1/models/signal")
        assert status == 200 and json.loads(raw)["model_version_status"][0]["state"] == "AVAILABLE"
        assert call(server.url, "/v2/models/other")[0] == 404
        assert call(server.url, "/invocations")[0] == 405
        assert server.billing()["requests"] == 0


@pytest.mark.parametrize("header, sent", [
    ("Authorization", lambda key: {"Authorization": f"Bearer {key}"}),
    ("X-API-Key", lambda key: {"X-API-Key": key}),
])
def test_a_key_is_required_and_refusals_are_not_billed(header, sent):
    with ModelServer(signal_backend(), name="signal", api_key=KEY, key_header=header) as server:
        x = batch(2)
        for headers in ({}, sent("wrong-key"), {"Authorization": KEY}, {"X-Other": KEY}):
            status, _, raw = infer(server, "v2", x, headers=headers)
            assert status == 401 and json.loads(raw) == {"error": "expected the API key, got a missing or wrong one"}
        assert call(server.url, "/billing")[0] == 401
        assert infer(server, "tf", x, headers=sent(KEY))[0] == 200
        status, _, raw = call(server.url, "/billing", headers=sent(KEY))
        assert status == 200
        assert json.loads(raw) == server.billing() == {
            "billed": 2, "answered": 2, "requests": 1, "replayed": 0, "unauthorized": 5,
            "faults": {"429": 0, "500": 0, "timeout": 0, "malformed": 0}}


def test_bad_requests_are_400_or_404_in_one_sentence_and_not_billed():
    with ModelServer(signal_backend(), name="signal") as server:
        x = batch(2)
        wrong = [
            ("/v2/models/signal/infer", v2_body(batch(2)[:, :1000])),                     # wrong shape
            ("/v2/models/signal/infer", v2_body(x, datatype="INT32")),
            ("/v2/models/signal/infer", {"inputs": [{**v2_body(x)["inputs"][0], "shape": [3, 1024]}]}),
            ("/v2/models/signal/infer", b"{not json"),
            ("/v1/models/signal:predict", {"instances": (x * 100).tolist()}),           # outside [-10, 10]
            ("/v1/models/signal:predict", {"instances": [[1.0, 2.0], [3.0]]}),
            ("/invocations", {"rows": x.tolist()}),
        ]
        for path, body in wrong:
            status, headers, raw = call(server.url, path, body)
            assert status == 400 and headers["Content-Type"] == "application/json", path
            message = json.loads(raw)["error"]
            assert message.startswith("expected") and "\n" not in message
        assert call(server.url, "/v2/models/other/infer", v2_body(x))[0] == 404
        assert call(server.url, "/v1/models/signal/versions/2:predict", {"instances": x.tolist()})[0] == 404
        assert server.billing()["billed"] == server.billing()["requests"] == 0


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "timeout"])
def test_every_fault_is_billed_and_counted(fault):
    with ModelServer(signal_backend(), name="signal", fault_rate=1.0, faults=(fault,),
                     retry_after=0.25, timeout_delay=0.3) as server:
        sizes = [1, 3, 2]
        for size in sizes:
            if fault == "timeout":
                with pytest.raises((TimeoutError, urllib.error.URLError)):
                    infer(server, "v2", batch(size), timeout=0.1)
                continue
            status, headers, raw = infer(server, "mlflow", batch(size))
            if fault == "429":
                assert status == 429 and headers["Retry-After"] == "1" and headers["retry-after-ms"] == "250"
            elif fault == "500":
                assert status == 500 and headers["Content-Type"] == "text/plain" and raw == b"internal error"
            else:
                assert status == 200 and headers["Content-Type"] == "application/json"
                with pytest.raises(json.JSONDecodeError):
                    json.loads(raw)
        assert server.billing() == {"billed": sum(sizes), "answered": 0, "requests": len(sizes), "replayed": 0, "unauthorized": 0,
                                    "faults": {"429": 0, "500": 0, "timeout": 0, "malformed": 0, fault: len(sizes)}}


def test_a_timeout_fault_answers_after_the_delay():
    with ModelServer(signal_backend(), name="signal", fault_rate=1.0, faults=("timeout",), timeout_delay=0.3) as server:
        start = time.monotonic()
        status, _, raw = infer(server, "tf", batch(2), timeout=5)
        assert status == 200 and len(json.loads(raw)["predictions"]) == 2
        assert time.monotonic() - start >= 0.3


def test_faults_follow_the_seed_and_the_bill_is_the_sum_of_the_batches():
    def statuses(seed):
        with ModelServer(signal_backend(), name="signal", fault_rate=0.1, faults=("429", "500"), seed=seed) as server:
            sizes = [1 + i % 3 for i in range(60)]
            seen = [infer(server, "v2", batch(size))[0] for size in sizes]
            bill = server.billing()
        assert bill["billed"] == sum(sizes) and bill["requests"] == 60
        assert bill["faults"]["429"] == seen.count(429) and bill["faults"]["500"] == seen.count(500)
        assert bill["answered"] == sum(size for size, status in zip(sizes, seen) if status == 200)
        return seen

    first = statuses(seed=7)
    assert 0 < sum(status != 200 for status in first) < 20
    assert statuses(seed=7) == first
    assert statuses(seed=8) != first


def test_concurrent_requests_are_all_billed():
    with ModelServer(signal_backend(), name="signal", latency=0.02) as server:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: infer(server, ("v2", "tf", "mlflow")[i % 3], batch(1 + i % 4))[0],
                                     range(24)))
        assert statuses == [200] * 24
        assert server.billing()["billed"] == server.billing()["answered"] == sum(1 + i % 4 for i in range(24))


@pytest.mark.parametrize("options, message", [
    ({"name": "a/b"}, "expected a model name of letters, digits, '.', '_' or '-', got 'a/b'"),
    ({"fault_rate": 1.5}, r"expected fault_rate in \[0, 1\], got 1.5"),
    ({"faults": ("429", "503")}, "expected faults among 429, 500, timeout, malformed, got '503'"),
    ({"faults": ()}, "expected faults among 429, 500, timeout, malformed, got none"),
    ({"latency": -1}, r"expected latency \(seconds\) >= 0, got -1"),
    ({"port": 70000}, r"expected a port in \[0, 65535\], got 70000"),
    ({"key_header": "X Key"}, "expected a header name like 'X-API-Key', got 'X Key'"),
    ({"api_key": "has space"}, "expected an API key of printable characters without spaces, got another value"),
    ({"output": "topk", "k": 99}, r"expected k in \[1, 32\], got 99"),
])
def test_bad_server_arguments_are_refused_in_one_sentence(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ModelServer(signal_backend(), **{"name": "signal", **options})


def bbreprog() -> list[str]:
    script = Path(sys.executable).parent / "bbreprog"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from blackbox_reprog.tools.cli import main; sys.exit(main())"]


def test_the_serve_command_serves_bills_and_never_shows_the_key(tmp_path):
    bill_file = tmp_path / "bill.json"
    env = {**os.environ, "BBREPROG_TEST_KEY": KEY}
    child = subprocess.Popen(
        [*bbreprog(), "serve", "crepe-tiny", "--port", "0", "--api-key-env", "BBREPROG_TEST_KEY",
         "--key-header", "X-API-Key", "--option", "threads=1", "--output", "topk", "--k", "3",
         "--billing-file", str(bill_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = child.stdout.readline()
        assert first.startswith("serving crepe-tiny on http://127.0.0.1:"), first + child.stderr.read()
        assert first.endswith("(V2: /v2/models/crepe-tiny/infer, TF-Serving: /v1/models/crepe-tiny:predict, "
                              "MLflow: /invocations)\n")
        url = first.split()[3]
        assert call(url, "/invocations", {"inputs": batch(2).tolist()})[0] == 401
        status, _, raw = call(url, "/v1/models/crepe-tiny:predict", {"instances": batch(2).tolist()},
                              headers={"X-API-Key": KEY})
        assert status == 200 and [len(row["labels"]) for row in json.loads(raw)["predictions"]] == [3, 3]
    finally:
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=20)
    assert child.returncode == 0, stderr
    bill = json.loads(stdout.strip().splitlines()[-1])
    assert bill["billed"] == bill["answered"] == 2 and bill["unauthorized"] == 1
    assert json.loads(bill_file.read_text()) == bill
    assert KEY not in first + stdout + stderr
    assert "POST /v1/models/crepe-tiny:predict 200" in stderr


def test_serve_refuses_an_unset_key_variable(monkeypatch):
    monkeypatch.delenv("BBREPROG_NO_SUCH_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve", "crepe-tiny", "--api-key-env", "BBREPROG_NO_SUCH_KEY"])
    assert result.exit_code == 2
    assert result.stderr == "error: expected environment variable BBREPROG_NO_SUCH_KEY to hold the API key, got it unset\n"


def test_the_server_listens_on_the_loopback_interface_only():
    with ModelServer(signal_backend(), name="signal") as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server._httpd.socket.getsockname() == ("127.0.0.1", server.port)
