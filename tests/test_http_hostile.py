"""The http plugin against options and servers that would turn it against its user: path
options that would carry the key to another origin, a server that refuses a request the same
way every time (a contract error, not an outage), and a certificate that does not verify on the
free health check. Every server here is real and binds 127.0.0.1 only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from bbreprog_http import ContractError, EndpointError, EndpointUnavailable, HttpBackend
from bbreprog_http.backend import PROTOCOL_OPTIONS
from bbreprog_http.keys import ApiKey
from bbreprog_http.transport import Transport
from blackbox_reprog.backends.base import BackendUnavailable
from blackbox_reprog.errors import Refusal
from blackbox_reprog.backends.ledger import Ledger
from tests.http_support import LocalCA, Reply, ScriptedServer, v2_one_hot

KEY_ENV = "BBREPROG_TEST_HOSTILE_KEY"
CANARY = "sk-CANARY-hostile-9e1f0c3b7a52d4"
CLASSES = 3


@pytest.fixture
def canary(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, CANARY)
    return CANARY


def settings(url: str, protocol: str, **options) -> dict:
    """Options for a backend on ``url`` that would construct (and check its health) if nothing
    in ``options`` were wrong."""
    base = {"v2": {"model_name": "m"}, "tfserving": {"model_name": "m"}, "mlflow": {},
            "template": {"path": "/predict", "health_path": "/healthz", "scores_path": "scores"}}[protocol]
    return {"protocol": protocol, "input_shape": [2], "num_classes": CLASSES, "output_kind": "logits",
            "key_env": KEY_ENV, "retries": 0, "connect_timeout": 1.0, "read_timeout": 2.0, **base, **options}


def one_sentence(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "\r" not in message and message.startswith("expected") and ", got" in message
    return message


# ---- 1. path options never take the key to another origin ----------------------------------------
#: every option that becomes part of a request's URL, per protocol (mlflow's paths are fixed)
PATH_OPTIONS = {"v2": ("model_name", "model_version"), "tfserving": ("model_name", "model_version"),
                "mlflow": (), "template": ("path", "health_path")}
#: the options that never reach a URL: names inside the JSON bodies and paths into the answer
NOT_IN_URLS = {"input_name", "request_outputs", "scores_output", "labels_output", "request", "scores_path",
               "topk_path", "labels_path", "label_key", "score_key"}
#: values aimed at ``there``, a second real listener on 127.0.0.1 ({there} is its host:port)
HOSTILE = {
    "@host": "@{there}",
    "@host/ready": "@{there}/ready",
    "//host": "//{there}",
    "//host/ready": "//{there}/ready",
    "http://host": "http://{there}",
    "full URL": "http://{there}/v2/models/m/ready",
    "backslashes": "\\\\{there}",
    "slash-backslash": "/\\{there}/ready",
    "%2F%2Fhost": "%2F%2F{there}",
    "/%2F%2Fhost": "/%2F%2F{there}/ready",
    "%40host": "%40{there}",
    "/%40host": "/x%40{there}",
    "%5Chost": "/%5C%5C{there}",
    "..": "..",
    "/../x": "/../x",
    "/%2e%2e/x": "/%2e%2e/x",
    "/.%2E/x": "/.%2E/x",
    "/./x": "/./x",
    "CR/LF": "/ready\r\nHost: {there}",
    "LF alone": "/ready\nX: 1",
    "space": "/ready HTTP/1.1",
    "fragment": "/ready#{there}",
}
CASES = [(protocol, option, value) for protocol, options in PATH_OPTIONS.items() for option in options
         for value in HOSTILE]


def test_the_path_options_listed_here_are_all_the_options_that_reach_a_url():
    for protocol, options in PROTOCOL_OPTIONS.items():
        assert set(options) - NOT_IN_URLS == set(PATH_OPTIONS[protocol]), protocol


@pytest.mark.parametrize("protocol, option, value", CASES, ids=[f"{p}-{o}-{v}" for p, o, v in CASES])
def test_a_path_option_aimed_elsewhere_is_refused_before_anything_is_sent(protocol, option, value, canary):
    with ScriptedServer([Reply(body={"scores": [[1, 0, 0]]})]) as here, ScriptedServer() as there:
        hostile = HOSTILE[value].format(there=f"127.0.0.1:{there.port}")
        with pytest.raises(Refusal) as refused:
            HttpBackend.from_config(here.url, **settings(here.url, protocol, **{option: hostile})).close()
        assert there.connections == 0 and there.requests == []      # not reached at all, the key least of all
        assert here.requests == []                                   # refused before the health check too
    message = one_sentence(refused.value)
    assert f"backend.options.{option}" in message and repr(hostile) in message
    assert CANARY not in message


@pytest.mark.parametrize("protocol", PATH_OPTIONS)
def test_plain_paths_and_names_still_reach_the_endpoint(protocol, canary):
    options = {"v2": {"model_name": "resnet-50_v1.2", "model_version": 2},
               "tfserving": {"model_name": "half_plus_two", "model_version": "00001"},
               "mlflow": {}, "template": {"path": "/api/v3/classify:run?version=2023-05-01",
                                          "health_path": "/api/v3/health"}}[protocol]
    with ScriptedServer([Reply(body={"scores": [[1, 0, 0]]})]) as here:
        HttpBackend.from_config(here.url, **settings(here.url, protocol, **options)).close()
    expected = {"v2": "/v2/models/resnet-50_v1.2/versions/2/ready", "tfserving": "/v1/models/half_plus_two/versions/00001",
                "mlflow": "/ping", "template": "/api/v3/health"}[protocol]
    assert [(r.method, r.path, r.headers["authorization"]) for r in here.requests] == [
        ("GET", expected, f"Bearer {CANARY}")]


TRANSPORT_PATHS = ["@{there}/x", "//{there}/x", "http://{there}/x", "\\\\{there}/x", "x", "", "/a/../b", "/%2E%2E/b",
                   "/a%2Fb", "/a%5cb", "/a%40b", "/a@b", "/a#b", "/a\r\nb", "/a b", "/a\x00b", "/a%0Db", "/caf\u00e9"]


@pytest.mark.parametrize("path", TRANSPORT_PATHS)
def test_the_transport_refuses_a_path_off_its_origin_for_every_request(path):
    """Below the protocols: whatever path reaches the transport, GET or POST, nothing leaves."""
    with ScriptedServer() as here, ScriptedServer() as there:
        hostile = path.format(there=f"127.0.0.1:{there.port}")
        transport = Transport(here.url, key=ApiKey(CANARY, "test"), retries=0)
        attempts = []
        try:
            with pytest.raises(Refusal) as on_get:
                transport.get(hostile)
            with pytest.raises(Refusal):
                transport.post(hostile, b"{}", attempts.append)
        finally:
            transport.close()
        assert there.connections == here.connections == 0
    assert attempts == []                                       # nothing booked: nothing was sent
    assert repr(hostile) in one_sentence(on_get.value)


@pytest.mark.parametrize("base", ["http://127.0.0.1:9/?model=x", "http://127.0.0.1:9/#x", "http://127.0.0.1:9/?",
                                  "http://127.0.0.1:99999", "http://[::1"])
def test_a_base_url_a_path_cannot_follow_is_refused(base):
    with pytest.raises(Refusal) as refused:
        Transport(base)
    one_sentence(refused.value)


def test_a_same_origin_redirect_to_a_path_that_hides_another_host_is_not_followed(canary):
    with ScriptedServer() as here:
        here.script = [Reply(307, {"Location": f"/v2/models/m/x%2F%2F127.0.0.1:{here.port}/infer"})]
        with closing(HttpBackend.from_config(here.url, **settings(here.url, "v2"))) as remote, \
                pytest.raises(EndpointError, match="not followed") as caught:
            remote.query(np.zeros((1, 2), np.float32))
    one_sentence(caught.value)
    assert len(here.posts) == 1


# ---- 2. a request the endpoint refuses the same way every time is a contract error ---------------
INVALID = {"error": "InvalidArgument: unexpected shape for input 'input' for model 'm'. Got: 512 Expected: 1024"}


def contract_backend(url: str, **options) -> closing:
    """A V2 backend (closed afterwards) making three attempts a call: retry waits are the short
    backoff of the first retries (under 1.5 s in all)."""
    return closing(HttpBackend.from_config(url, **settings(url, "v2", **{"retries": 2, **options})))


def tally(book: Ledger, purpose: str) -> tuple[int, int, int]:
    t = book.tallies[purpose]
    return t.queries, t.retried, t.calls


def test_the_same_500_to_every_attempt_of_the_first_call_is_a_contract_error(canary):
    echo = {"error": INVALID["error"], "seen": CANARY}          # a server echoing the key back
    with ScriptedServer([Reply(500, {}, echo)]) as server, contract_backend(server.url) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(ContractError) as caught:
            book.query(np.zeros((1, 2), np.float32), "probe")
    error = caught.value
    assert isinstance(error, Refusal) and not isinstance(error, BackendUnavailable)
    message = one_sentence(error)
    assert "HTTP 500" in message and "Got: 512 Expected: 1024" in message and "all 3 attempts" in message
    assert CANARY not in message and '"seen": "***"' in message
    assert len(server.posts) == 3
    assert tally(book, "probe") == (1, 2, 3)                   # every attempt was sent, so every one is booked


def test_a_4xx_is_a_contract_error_at_once():
    with ScriptedServer([Reply(400, {}, INVALID)]) as server, contract_backend(server.url, key_env="") as remote, \
            pytest.raises(ContractError, match="Got: 512 Expected: 1024"):
        remote.query(np.zeros((1, 2), np.float32))
    assert len(server.posts) == 1


ONE_HOT = v2_one_hot(CLASSES)
OUTAGES = {
    "bodies that differ": ([Reply(500, {}, b"worker 1 crashed"), Reply(500, {}, b"worker 2 crashed")],
                           "worker 1 crashed"),
    "503 with Retry-After": ([Reply(503, {"Retry-After": "0"}, INVALID)], "Got: 512"),
    "429": ([Reply(429, {}, b"slow down")], "slow down"),
    "502 from a gateway": ([Reply(502, {}, b"bad gateway")], "bad gateway"),
    "a failure, then timeouts": ([Reply(500, {}, b"first of all"), Reply(body=b"{}", delay=1.0)], "first of all"),
    # the same request shape was answered before: the endpoint broke, resuming later may help
    "the same 500 after a good answer": ([ONE_HOT, Reply(500, {}, INVALID)], "Got: 512"),
    # with retries = 0 nothing was sent twice: one answer says nothing about the next
    "one 500, not retried": ([Reply(500, {}, INVALID)], "Got: 512"),
}


@pytest.mark.parametrize("case", OUTAGES)
def test_failures_that_may_pass_stay_an_outage_with_the_first_answer_in_the_message(case):
    script, first = OUTAGES[case]
    retries = 0 if case == "one 500, not retried" else 1
    with ScriptedServer(script) as server, \
            contract_backend(server.url, key_env="", retries=retries, read_timeout=0.3) as remote:
        if case.startswith("the same 500 after"):
            remote.query(np.zeros((1, 2), np.float32))
        with pytest.raises(EndpointUnavailable) as caught:
            remote.query(np.zeros((1, 2), np.float32))
    assert not isinstance(caught.value, Refusal)
    assert first in one_sentence(caught.value)


def train_config(folder: Path, url: str, **options) -> Path:
    backend = {"protocol": "v2", "model_name": "crepe-tiny", "input_shape": [1024], "num_classes": 360,
               "value_range": [-10.0, 10.0], "output_kind": "logits", **options}
    config = folder / "contract.toml"
    config.write_text(
        f'budget = 3000\nseed = 1\nname = "contract"\n[backend]\nname = "http"\nmodel = "{url}"\n'
        "[backend.options]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in backend.items()) +
        '[data]\nname = "ItalyPowerDemand"\n[transform]\nkind = "signal"\ngrid = 16\n'
        '[label_map]\nkind = "frequency"\nper_class = 4\n[train]\nbatch_size = 16\n')
    return config


def test_the_cli_ends_a_run_whose_probe_breaks_the_contract_with_exit_code_2(tmp_path):
    bbreprog = str(Path(sys.executable).with_name("bbreprog"))
    env = {**os.environ, KEY_ENV: CANARY}
    with ScriptedServer([Reply(500, {}, INVALID)]) as server:
        config = train_config(tmp_path, server.url, retries=2, key_env=KEY_ENV)
        result = subprocess.run([bbreprog, "train", str(config), "--out", str(tmp_path / "runs"), "--quiet"],
                                check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: expected HTTP 200 from ") and result.stderr.count("\n") == 1
    assert "Got: 512 Expected: 1024" in result.stderr and "resume" not in result.stderr
    assert CANARY not in result.stderr + result.stdout
    assert len(server.posts) == 3                                # the probe and its two retries, nothing more
    records = [json.loads(line) for line in (tmp_path / "runs" / "contract" / "journal.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["intent", "retry", "retry", "failed"]   # every attempt booked
    assert records[-1]["error"] == "ContractError"


# ---- 3. a certificate that does not verify says so on the health check too -----------------------
@pytest.fixture(scope="module")
def local_ca(tmp_path_factory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("protocol, path", [("v2", "/v2/models/m/ready"), ("template", "/healthz")])
def test_an_unverified_certificate_on_the_health_check_is_the_tls_sentence(protocol, path, local_ca, canary):
    with ScriptedServer(tls=local_ca) as server:
        with pytest.raises(Refusal) as refused:
            HttpBackend.from_config(server.url, **settings(server.url, protocol)).close()
        assert server.requests == []
    message = one_sentence(refused.value)
    assert message == (f"expected a TLS certificate for GET {server.url}{path} that verifies, got one that does "
                       "not (name a private CA with backend.options.ca_bundle)")


def test_the_health_check_and_a_query_say_the_same_about_a_certificate(local_ca, canary):
    with ScriptedServer([Reply(body={"scores": [[1, 0, 0]]})], tls=local_ca) as server:
        template = settings(server.url, "template", health_path="")
        with closing(HttpBackend.from_config(server.url, **template)) as remote, \
                pytest.raises(EndpointError) as caught:
            remote.query(np.zeros((1, 2), np.float32))
        assert server.requests == []
    assert one_sentence(caught.value) == (f"expected a TLS certificate for POST {server.url}/predict that verifies, "
                                          "got one that does not (name a private CA with backend.options.ca_bundle)")
