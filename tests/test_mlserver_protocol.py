"""Wire facts of a real MLServer (Open Inference Protocol / KServe V2 REST) that our HTTP
client must handle, pinned with raw ``requests`` calls against MLServer 1.7.1 serving a
scikit-learn LogisticRegression on the digits set (see tests/mlserver_support.py).

If one of these fails after an MLServer upgrade, the server's wire format changed: check the
client against the new behaviour before updating the assertion.
"""
from __future__ import annotations

import ipaddress
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.mlserver_support import MODEL_NAME, MODEL_VERSION, VERSIONED_MODEL_NAME

TIMEOUT = 10


@pytest.fixture(scope="module")
def batch():
    """Five digits rows with non-integer noise, as float32 (what FP32 carries)."""
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    return (X[:5] + rng.uniform(-0.5, 0.5, size=(5, 64))).astype(np.float32)


def infer_body(X, outputs=None, request_id=None, datatype="FP32"):
    body = {"inputs": [{"name": "input-0", "shape": list(X.shape), "datatype": datatype,
                        "data": X.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    if request_id is not None:
        body["id"] = request_id
    return body


def post_infer(server, body, model=MODEL_NAME, version=None, **kwargs):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return requests.post(server.base_url + path, json=body, timeout=TIMEOUT, **kwargs)


def test_started_quickly(mlserver):
    assert mlserver.startup_s < 60


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready",
                                  f"/v2/models/{MODEL_NAME}/ready"])
def test_health_endpoints_are_200_with_empty_body(mlserver, path):
    r = requests.get(mlserver.base_url + path, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert "content-type" not in r.headers


def test_server_metadata(mlserver):
    r = requests.get(mlserver.base_url + "/v2", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"name": "mlserver", "version": "1.7.1", "extensions": []}


def test_model_metadata_is_sparse(mlserver):
    # No shapes or datatypes are advertised: a client can't learn 64 features / 10 classes here.
    r = requests.get(f"{mlserver.base_url}/v2/models/{MODEL_NAME}", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"name": MODEL_NAME, "versions": [], "platform": "", "inputs": [],
                        "outputs": [], "parameters": {}}


def test_predict_proba_output(mlserver, batch):
    r = post_infer(mlserver, infer_body(batch, outputs=["predict_proba"], request_id="req-42"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    # model_version is left out (not null) for a model without a version; parameters is {}.
    assert set(body) == {"model_name", "id", "parameters", "outputs"}
    assert body["model_name"] == MODEL_NAME
    assert body["id"] == "req-42"
    assert body["parameters"] == {}
    assert r.headers["ce-id"] == r.headers["ce-requestid"] == "req-42"   # CloudEvents headers
    [out] = body["outputs"]
    assert out["name"] == "predict_proba"
    assert out["shape"] == [5, 10]
    assert out["datatype"] == "FP64"
    assert out["parameters"] == {"content_type": "np"}
    assert len(out["data"]) == 50                       # flat, row-major
    got = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
    np.testing.assert_allclose(got, mlserver.model.predict_proba(batch), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)


def test_default_output_is_predict_labels_as_int64_column(mlserver, batch):
    r = post_infer(mlserver, infer_body(batch))
    assert r.status_code == 200
    body = r.json()
    [out] = body["outputs"]
    assert out["name"] == "predict"
    assert out["shape"] == [5, 1]                       # a column, not [5]
    assert out["datatype"] == "INT64"
    assert out["data"] == mlserver.model.predict(batch).tolist()
    # Without an id in the request the server makes one up (a UUID) and returns it.
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert r.headers["ce-id"] == body["id"]


def test_outputs_come_back_in_request_order(mlserver, batch):
    r = post_infer(mlserver, infer_body(batch, outputs=["predict", "predict_proba"]))
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["predict", "predict_proba"]


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_nested_data_and_fp64_are_accepted(mlserver, batch, datatype):
    body = infer_body(batch, outputs=["predict_proba"], datatype=datatype)
    body["inputs"][0]["data"] = batch.tolist()          # nested lists instead of flat
    r = post_infer(mlserver, body)
    assert r.status_code == 200
    out = r.json()["outputs"][0]
    got = np.asarray(out["data"]).reshape(out["shape"])
    np.testing.assert_allclose(got, mlserver.model.predict_proba(batch), rtol=0, atol=1e-6)


def test_request_without_content_type_is_accepted(mlserver, batch):
    import json

    r = requests.post(f"{mlserver.base_url}/v2/models/{MODEL_NAME}/infer",
                      data=json.dumps(infer_body(batch)), timeout=TIMEOUT)
    assert "content-type" not in r.request.headers
    assert r.status_code == 200


@pytest.mark.parametrize("case", ["shape-disagrees-with-data", "wrong-feature-count", "bytes"])
def test_bad_tensors_are_500_plain_text(mlserver, batch, case):
    # Not the {"error": ...} JSON of other failures: a bare 500 from the ASGI stack.
    if case == "shape-disagrees-with-data":
        body = infer_body(batch)
        body["inputs"][0]["shape"] = [5, 63]            # 320 values cannot take shape 5x63
    elif case == "wrong-feature-count":
        body = infer_body(np.ascontiguousarray(batch[:, :63]))   # consistent, but 63 != 64
    else:
        body = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "BYTES",
                            "data": ["a"] * 64}]}
    r = post_infer(mlserver, body)
    assert r.status_code == 500
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == "Internal Server Error"


@pytest.mark.parametrize("inputs, message", [
    (2, "The 'np' codec only supports a single input tensor (2 were received)"),
    (0, "The 'np' codec only supports a single input tensor (0 were received)"),
])
def test_input_count_errors_are_400_json(mlserver, batch, inputs, message):
    half = np.ascontiguousarray(batch[:, :32])
    body = {"inputs": [{"name": f"in-{i}", "shape": [5, 32], "datatype": "FP32",
                        "data": half.ravel().tolist()} for i in range(inputs)]}
    r = post_infer(mlserver, body)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "There was an error encoding / decoding the payload: " + message}


def test_unknown_output_is_400_json(mlserver, batch):
    r = post_infer(mlserver, infer_body(batch, outputs=["decision_function"]))
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "SKLearnModel only supports 'predict', 'predict_proba' and "
                                 "'transform' as outputs (decision_function was received)"}


def test_unknown_model_is_404_json(mlserver, batch):
    r = post_infer(mlserver, infer_body(batch), model="nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "Model nope not found"}
    r = requests.get(mlserver.base_url + "/v2/models/nope", timeout=TIMEOUT)
    assert (r.status_code, r.json()) == (404, {"error": "Model nope not found"})


def test_invalid_datatype_is_422_fastapi_detail(mlserver, batch):
    # Request validation errors use FastAPI's {"detail": [...]}, not {"error": ...}.
    r = post_infer(mlserver, infer_body(batch, datatype="FP17"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/json"
    [detail] = r.json()["detail"]
    assert detail["type"] == "enum"
    assert detail["loc"] == ["body", "inputs", 0, "datatype"]


@pytest.mark.parametrize("payload", ["not json", '{"inputs": [{"name": "input-0", "shape": [1, 1], '
                                                 '"datatype": "FP32", "data": [NaN]}]}'])
def test_invalid_json_is_422_and_nan_is_not_json(mlserver, payload):
    # Python's json.dumps writes NaN by default; MLServer refuses it as invalid JSON.
    r = requests.post(f"{mlserver.base_url}/v2/models/{MODEL_NAME}/infer", data=payload,
                      headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_get_on_infer_is_405(mlserver):
    r = requests.get(f"{mlserver.base_url}/v2/models/{MODEL_NAME}/infer", timeout=TIMEOUT)
    assert r.status_code == 405
    assert r.json() == {"detail": "Method Not Allowed"}


def test_versioned_paths(mlserver, batch):
    body = infer_body(batch, request_id="v")
    # A model without a version: the versioned path is a 404 with MLServer's error JSON.
    r = post_infer(mlserver, body, version="1")
    assert (r.status_code, r.json()) == (404, {"error": f"Model {MODEL_NAME} with version 1 not found"})
    r = requests.get(f"{mlserver.base_url}/v2/models/{MODEL_NAME}/versions/1/ready", timeout=TIMEOUT)
    assert r.status_code == 404
    # A model with version "1": both paths answer, and model_version is echoed as a string.
    for version in (MODEL_VERSION, None):
        r = post_infer(mlserver, body, model=VERSIONED_MODEL_NAME, version=version)
        assert r.status_code == 200
        got = r.json()
        assert (got["model_name"], got["model_version"], got["id"]) == (
            VERSIONED_MODEL_NAME, MODEL_VERSION, "v")
    r = post_infer(mlserver, body, model=VERSIONED_MODEL_NAME, version="2")
    assert (r.status_code, r.json()) == (
        404, {"error": f"Model {VERSIONED_MODEL_NAME} with version 2 not found"})
    # Metadata lists no versions even for a versioned model.
    r = requests.get(f"{mlserver.base_url}/v2/models/{VERSIONED_MODEL_NAME}/versions/1",
                     timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["versions"] == []


def test_repository_index(mlserver):
    r = requests.post(mlserver.base_url + "/v2/repository/index", json={}, timeout=TIMEOUT)
    assert r.status_code == 200
    assert sorted(r.json(), key=lambda m: m["name"]) == [
        {"name": MODEL_NAME, "state": "READY", "reason": ""},
        {"name": VERSIONED_MODEL_NAME, "version": MODEL_VERSION, "state": "READY", "reason": ""},
    ]


def test_large_responses_are_gzipped_when_asked(mlserver):
    X = np.ones((200, 64), dtype=np.float32)
    body = infer_body(X, outputs=["predict_proba"])
    r = post_infer(mlserver, body, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"      # requests decodes it transparently
    assert r.json()["outputs"][0]["shape"] == [200, 10]
    r = post_infer(mlserver, body, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert "content-encoding" not in r.headers


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:   # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add((str(address), int(hex_port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_listens_on_loopback_only_without_workers(mlserver):
    pids = _group_pids(mlserver.process.pid)
    assert pids == [mlserver.process.pid]               # parallel_workers=0: no worker processes
    http_port = int(mlserver.base_url.rsplit(":", 1)[1])
    # REST and gRPC only (no metrics server), both on 127.0.0.1 (gRPC as ::ffff:127.0.0.1).
    assert _listening(pids) == {("127.0.0.1", http_port), ("127.0.0.1", mlserver.grpc_port)}
