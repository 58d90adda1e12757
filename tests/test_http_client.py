"""The http plugin against a real local server: what is retried and how long it waits, what the
ledger books, the circuit breaker, redirects that would leak a key, TLS, keys, and the answer
contract of every protocol. Every server here binds 127.0.0.1 only."""
from __future__ import annotations

import contextlib
import email.utils
import math
import os
import pickle
import random
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from bbreprog_http import EndpointError, EndpointUnavailable, HttpBackend, ResponseError
from bbreprog_http.keys import ApiKey
from bbreprog_http.protocols import PROBABILITY_TOLERANCE, V2, Contract, MLflow, Template, TFServing
from bbreprog_http.retry import backoff, retry_delay, server_delay
from bbreprog_http.transport import ContractError, Transport
from blackbox_reprog.backends.base import Capabilities, Prediction
from blackbox_reprog.backends.ledger import BudgetExceeded, Ledger
from tests.http_support import (LocalCA, Received, Reply, ScriptedServer, free_port, v2_answer, v2_inputs,
                                v2_one_hot)

KEY_ENV = "BBREPROG_TEST_HTTP_KEY"
CANARY = "sk-CANARY-4f9d2b7e1c6a8035e2d1-never-shown"
CLASSES = 3
INFER = "/v2/models/m/infer"
ONE_HOT = v2_one_hot(CLASSES)
BUSY = Reply(503, {"retry-after-ms": "1"}, b"busy")


# ---- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def canary(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, CANARY)
    return CANARY


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def connected(url: str, **options):
    """An HttpBackend (V2, 2 inputs, 3 logits, short timeouts) closed afterwards."""
    settings_ = {"protocol": "v2", "model_name": "m", "input_shape": [2], "num_classes": CLASSES,
                 "output_kind": "logits", "retries": 3, "connect_timeout": 2.0, "read_timeout": 5.0}
    if options.get("protocol", "v2") != "v2":
        del settings_["model_name"]
    backend = HttpBackend.from_config(url, **{**settings_, **options})
    try:
        yield backend
    finally:
        backend.close()


def template(url: str, **options):
    """An HttpBackend speaking a JSON template: no health check, the first request is a query."""
    return connected(url, **{"protocol": "template", "path": "/predict", "scores_path": "scores", **options})


def batch(n: int) -> np.ndarray:
    """Example i has x[i, 0] = i mod 3, so ONE_HOT answers class i mod 3."""
    x = np.zeros((n, 2), np.float32)
    x[:, 0] = np.arange(n) % CLASSES
    return x


def one_sentence(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "expected" in message and ", got" in message, message
    return message


def assert_keeps_secret(error: BaseException, *secrets: str) -> None:
    """Neither the exception nor anything a traceback would show chained to it (its cause, its
    context unless suppressed) shows any secret, in str or repr."""
    seen, chain = set(), [error]
    while chain:
        current = chain.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        for text in (str(current), repr(current), *map(repr, current.args)):
            for secret in secrets:
                assert secret not in text, f"the key leaked into {type(current).__name__}: {text!r}"
        chain.append(current.__cause__)
        if not current.__suppress_context__:
            chain.append(current.__context__)


def tally(book: Ledger, purpose: str = "train") -> tuple[int, int, int]:
    t = book.tallies[purpose]
    return t.queries, t.retried, t.calls


# ---- Retry-After and backoff (pure) ----------------------------------------------------------
NOW = email.utils.parsedate_to_datetime("Wed, 21 Oct 2026 07:28:00 GMT").timestamp()


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "3"}, 3.0),
    ({"Retry-After": " 3 "}, 3.0),
    ({"Retry-After": "0"}, 0.0),
    ({"Retry-After": "1.5"}, 1.5),
    ({"Retry-After": "60"}, 60.0),                                     # exactly the cap
    ({"retry-after-ms": "250"}, 0.25),
    ({"Retry-After-Ms": "250", "Retry-After": "30"}, 0.25),             # milliseconds win
    ({"retry-after-ms": "soon", "Retry-After": "2"}, 2.0),             # a garbled one is skipped
    ({"Retry-After": "Wed, 21 Oct 2026 07:28:07 GMT"}, 7.0),           # a date: its distance from now
    ({"Retry-After": "Wed, 21 Oct 2026 07:27:00 GMT"}, 0.0),           # a date gone by: at once
    ({"Retry-After": "Wed, 21 Oct 2026 08:28:00 GMT"}, None),          # an hour away: over the cap
    ({"Retry-After": "61"}, None),
    ({"Retry-After": "1e400"}, None),
    ({"Retry-After": "-1"}, None),
    ({"retry-after-ms": "-5"}, None),
    ({"retry-after-ms": "60001"}, None),
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "-Infinity"}, None),
    ({"Retry-After": "nan"}, None),
    ({"retry-after-ms": "NaN"}, None),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "Wed, 99 Foo 2026 07:28:00 GMT"}, None),
    ({"Retry-After": ""}, None),
    ({}, None),
], ids=lambda case: "; ".join(f"{k}: {v}" for k, v in case.items()) or "none" if isinstance(case, dict) else str(case))
def test_server_delay_honours_only_finite_waits_within_the_cap(headers, expected):
    asked = server_delay(CaseInsensitiveDict(headers), cap=60.0, now=NOW)
    assert asked == (None if expected is None else pytest.approx(expected, abs=1e-6))


@pytest.mark.parametrize("retry", range(12))
def test_backoff_is_jittered_between_half_and_all_of_its_ceiling(retry):
    top = min(0.5 * 2 ** retry, 8.0)
    rng = random.Random(retry)
    waits = [backoff(retry, rng=rng) for _ in range(300)]
    assert top / 2 <= min(waits) and max(waits) <= top
    assert max(waits) - min(waits) > top / 4                  # jitter: not everyone retries in step


def test_backoff_for_a_very_late_retry_stays_at_the_ceiling():
    assert 4.0 <= backoff(5000, rng=random.Random(0)) <= 8.0   # 2.0 ** 5000 must not overflow


@pytest.mark.parametrize("headers", [None, {"Retry-After": "120"}, {"Retry-After": "inf"},
                                     {"Retry-After": "garbage"}, {"retry-after-ms": "-1"}])
def test_retry_delay_falls_back_to_backoff_when_the_server_asks_nothing_usable(headers):
    rng = random.Random(1)
    for retry in range(8):
        top = min(0.5 * 2 ** retry, 8.0)
        wait = retry_delay(None if headers is None else CaseInsensitiveDict(headers), retry, cap=60.0, rng=rng)
        assert top / 2 <= wait <= top


def test_retry_delay_uses_the_servers_wait_when_it_is_usable():
    assert retry_delay(CaseInsensitiveDict({"Retry-After": "30"}), 0, cap=60.0) == 30.0
    assert retry_delay(CaseInsensitiveDict({"retry-after-ms": "1"}), 9, cap=60.0) == 0.001


# ---- what is retried, through a real server --------------------------------------------------
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_a_retryable_status_is_sent_again_and_booked_as_a_retry(status, canary):
    with ScriptedServer([Reply(status, {"retry-after-ms": "1"}, b"try again"), ONE_HOT]) as server, \
            connected(server.url, key_env=KEY_ENV) as remote:
        book = Ledger(remote, budget=None)
        answer = book.query(batch(3), "train")
    assert answer.top1().tolist() == [0, 1, 2]
    first, second = server.posts
    assert first.path == second.path == INFER and first.body == second.body
    assert first.headers["authorization"] == second.headers["authorization"] == f"Bearer {CANARY}"
    assert tally(book) == (3, 3, 2)                           # 3 queries, 3 sent again, 2 requests
    assert book.spent == 6


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_refusing_status_is_not_sent_again(status, canary):
    with ScriptedServer([Reply(status, {"retry-after-ms": "1"}, b'{"error": "bad request"}'), ONE_HOT]) as server, \
            connected(server.url, key_env=KEY_ENV) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(EndpointError) as caught:
            book.query(batch(2), "train")
    assert type(caught.value) is ContractError                # the request is wrong: refused, not retried later
    assert f"got HTTP {status}" in one_sentence(caught.value)
    assert len(server.posts) == 1
    assert tally(book) == (2, 0, 1)
    assert_keeps_secret(caught.value, CANARY)


def test_the_servers_retry_after_ms_is_waited_for():
    # 0.6 s is above the longest first backoff (0.5 s): a gap this long means the header was read
    with ScriptedServer([Reply(503, {"retry-after-ms": "600"}), ONE_HOT]) as server, connected(server.url) as remote:
        remote.query(batch(1))
    first, second = server.posts
    assert second.at - first.at >= 0.6


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"", b'{"outputs": []}',
                                  b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 2], '
                                  b'"data": [0, 0, 0, 0]}]}'])
def test_a_200_with_a_bad_body_is_paid_once_and_never_bought_again(body):
    with ScriptedServer([Reply(200, {}, body), ONE_HOT]) as server, connected(server.url) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(ResponseError) as caught:
            book.query(batch(2), "train")
    assert server.url in one_sentence(caught.value)
    assert len(server.posts) == 1
    assert tally(book) == (2, 0, 1)                           # it was paid: booked


def test_a_200_with_json_nested_too_deep_is_a_response_error():
    with ScriptedServer([Reply(200, {}, b"[" * 100_000)]) as server, connected(server.url) as remote:
        with pytest.raises(ResponseError) as caught:       # not a RecursionError out of json.loads
            remote.query(batch(1))
    one_sentence(caught.value)
    assert len(server.posts) == 1


def test_scores_beyond_float32_are_refused_as_a_response_error():
    # 1e39 is finite as JSON/float64 but infinite once cast to the float32 the toolkit uses
    with ScriptedServer([Reply(body=v2_answer([[1e39, 0.0, 0.0]], datatype="FP64"))]) as server, \
            connected(server.url) as remote:
        with pytest.raises(ResponseError) as caught:
            remote.query(batch(1))
    one_sentence(caught.value)


def test_a_read_timeout_is_retried(canary):
    def slow(request: Received) -> Reply:
        return replace(ONE_HOT(request), delay=0.6)

    with ScriptedServer([slow, ONE_HOT]) as server, \
            connected(server.url, key_env=KEY_ENV, read_timeout=0.2) as remote:
        book = Ledger(remote, budget=None)
        answer = book.query(batch(3), "train")
    assert answer.top1().tolist() == [0, 1, 2]
    assert len(server.posts) == 2
    assert tally(book) == (3, 3, 2)


def test_a_refused_connection_is_retried_and_the_retry_reaches_the_server():
    port = free_port()
    transport = Transport(f"http://127.0.0.1:{port}", retries=2, connect_timeout=1.0, read_timeout=2.0)
    attempts, started = [], []

    def on_attempt(is_retry: bool) -> None:                   # the server comes up just before the retry
        attempts.append(is_retry)
        if is_retry and not started:
            started.append(ScriptedServer([Reply(body=b'{"ok": 1}')], port=port).start())

    try:
        response = transport.post("/predict", b"{}", on_attempt)
    finally:
        transport.close()
        for server in started:
            server.stop()
    assert response.status_code == 200 and response.json() == {"ok": 1}
    assert attempts == [False, True]
    assert len(started[0].posts) == 1


def test_a_connection_refused_every_time_books_each_attempt_and_fails_in_one_sentence():
    with template(f"http://127.0.0.1:{free_port()}", retries=1, connect_timeout=1.0) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(EndpointError) as caught:
            book.query(batch(2), "train")
    assert "connection error" in one_sentence(caught.value) and "2 attempts" in str(caught.value)
    assert tally(book) == (2, 2, 2)


# ---- the budget covers retries ---------------------------------------------------------------
def test_a_retry_that_would_exceed_the_budget_is_refused_before_it_is_sent():
    with ScriptedServer([BUSY, ONE_HOT]) as server, connected(server.url) as remote:
        book = Ledger(remote, budget=5)
        with pytest.raises(BudgetExceeded, match=r"would exceed the budget \(3 of 5 spent\)"):
            book.query(batch(3), "train")
    assert len(server.posts) == 1
    assert tally(book) == (3, 0, 1) and book.spent == 3


def test_a_retry_that_fits_the_budget_exactly_is_sent():
    with ScriptedServer([BUSY, ONE_HOT]) as server, connected(server.url) as remote:
        book = Ledger(remote, budget=6)
        book.query(batch(3), "train")
    assert len(server.posts) == 2 and book.spent == 6 and book.remaining == 0


def test_concurrent_retries_never_take_the_ledger_over_its_budget():
    # two requests of 4 fail at once; the budget (12) has room for one retry of 4, not two
    with ScriptedServer([BUSY, BUSY, ONE_HOT]) as server, \
            connected(server.url, max_batch=4, concurrency=2) as remote:
        book = Ledger(remote, budget=12)
        with pytest.raises(BudgetExceeded):
            book.query(batch(8), "train")
    assert len(server.posts) == 3
    assert tally(book) == (8, 4, 3) and book.spent == 12


# ---- circuit breaker -------------------------------------------------------------------------
def test_the_breaker_opens_after_exactly_its_run_of_failures_within_one_call():
    with ScriptedServer([BUSY]) as server, connected(server.url, retries=10, breaker_failures=4) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(EndpointUnavailable) as caught:
            book.query(batch(2), "train")
        assert "4 failed attempts in a row" in one_sentence(caught.value)
        assert len(server.posts) == 4 and tally(book) == (2, 6, 4)
        with pytest.raises(EndpointUnavailable):            # later calls: refused, nothing sent
            book.query(batch(2), "train")
    assert len(server.posts) == 4 and tally(book) == (2, 6, 4)


def test_the_breaker_counts_failures_across_calls():
    with ScriptedServer([BUSY]) as server, connected(server.url, retries=1, breaker_failures=4) as remote:
        book = Ledger(remote, budget=None)
        for _ in range(2):            # 2 attempts each: 4 in a row; retries used up means the endpoint is down
            with pytest.raises(EndpointUnavailable, match="on all 2 attempts"):
                book.query(batch(1), "train")
        with pytest.raises(EndpointUnavailable, match="4 failed attempts in a row"):   # refused unsent
            book.query(batch(1), "train")
    assert len(server.posts) == 4
    assert tally(book) == (2, 2, 4)


def test_a_success_resets_the_breaker():
    script = [BUSY, BUSY, BUSY, ONE_HOT, BUSY, BUSY, BUSY, ONE_HOT]
    with ScriptedServer(script) as server, connected(server.url, retries=5, breaker_failures=4) as remote:
        remote.query(batch(1))
        remote.query(batch(1))                               # 3 failures, a success, 3 failures: closed
    assert len(server.posts) == 8


# ---- redirects never carry the key elsewhere -------------------------------------------------
LEAKING_REDIRECTS = {
    "another host": lambda here, there: f"http://localhost:{there.port}{INFER}",
    "another port": lambda here, there: f"http://127.0.0.1:{there.port}{INFER}",
    "credentials in the URL, same origin": lambda here, there: f"http://user:pass@127.0.0.1:{here.port}{INFER}",
    "the key in the target's query": lambda here, there: f"http://localhost:{there.port}/login?token={CANARY}",
}


@pytest.mark.parametrize("case", LEAKING_REDIRECTS)
def test_a_redirect_off_the_origin_is_not_followed(case, canary):
    with ScriptedServer([ONE_HOT]) as there, ScriptedServer([BUSY]) as here:
        here.script = [Reply(307, {"Location": LEAKING_REDIRECTS[case](here, there)})]
        with connected(here.url, key_env=KEY_ENV) as remote:
            book = Ledger(remote, budget=None)
            with pytest.raises(EndpointError) as caught:
                book.query(batch(2), "train")
    assert "not followed" in one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY)
    assert there.requests == []                               # the target saw nothing at all
    assert len(here.posts) == 1                               # and the origin no second request
    assert tally(book) == (2, 0, 1)


def test_a_redirect_from_https_to_http_is_not_followed(canary, local_ca):
    with ScriptedServer([ONE_HOT]) as plain, ScriptedServer([BUSY], tls=local_ca) as secure:
        for target in (f"http://127.0.0.1:{plain.port}{INFER}",       # another server, plain
                       f"http://127.0.0.1:{secure.port}{INFER}"):     # the same host and port, plain
            secure.script = [Reply(307, {"Location": target})]
            with connected(secure.url, key_env=KEY_ENV, ca_bundle=local_ca.ca_file) as remote:
                with pytest.raises(EndpointError) as caught:
                    remote.query(batch(1))
            assert "not followed" in one_sentence(caught.value)
            assert_keeps_secret(caught.value, CANARY)
    assert plain.requests == []
    assert secure.tls_failures == 0                           # no plain-text bytes reached the TLS port
    assert len(secure.posts) == 2 and all(r.headers["authorization"] == f"Bearer {CANARY}" for r in secure.posts)


def test_a_same_origin_307_is_followed_with_the_key_and_the_resent_body_is_booked(canary):
    with ScriptedServer([Reply(307, {"Location": "/v2/models/m/versions/2/infer"}), ONE_HOT]) as server, \
            connected(server.url, key_env=KEY_ENV) as remote:
        book = Ledger(remote, budget=None)
        answer = book.query(batch(3), "train")
    assert answer.top1().tolist() == [0, 1, 2]
    assert [r.path for r in server.posts] == [INFER, "/v2/models/m/versions/2/infer"]
    assert all(r.headers["authorization"] == f"Bearer {CANARY}" for r in server.posts)
    assert server.posts[0].body == server.posts[1].body
    assert tally(book) == (3, 3, 2)          # the body left twice: both sends may be billed


def test_a_redirect_that_would_turn_the_post_into_a_get_is_refused():
    with ScriptedServer([Reply(303, {"Location": "/elsewhere"}), ONE_HOT]) as server, \
            connected(server.url) as remote:
        with pytest.raises(EndpointError, match="keeps its method") as caught:
            remote.query(batch(1))
    one_sentence(caught.value)
    assert len(server.posts) == 1


def test_a_redirect_loop_stops_after_max_redirects():
    with ScriptedServer([Reply(307, {"Location": INFER})]) as server, connected(server.url) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(EndpointError, match="more than 3 redirects") as caught:
            book.query(batch(1), "train")
    one_sentence(caught.value)
    assert len(server.posts) == 4 and tally(book) == (1, 3, 4)   # every send booked


def test_a_redirect_to_an_unparsable_port_is_one_endpoint_error():
    with ScriptedServer([Reply(307, {"Location": "http://127.0.0.1:99999/x"})]) as server, \
            connected(server.url) as remote:
        with pytest.raises(EndpointError) as caught:       # not a bare "Port out of range" ValueError
            remote.query(batch(1))
    one_sentence(caught.value)


# ---- TLS ---------------------------------------------------------------------------------------
def test_https_is_verified_by_default_and_refused_before_any_query(canary, local_ca):
    with ScriptedServer([ONE_HOT], tls=local_ca) as server:
        with pytest.raises(ValueError) as caught:
            with connected(server.url, key_env=KEY_ENV):
                pass
        assert f"GET {server.url}/v2/models/m/ready" in one_sentence(caught.value)
        assert_keeps_secret(caught.value, CANARY)
        assert server.requests == []                          # not even the health check got through
        with connected(server.url, key_env=KEY_ENV, ca_bundle=local_ca.ca_file) as remote:
            book = Ledger(remote, budget=10)
            assert book.query(batch(3), "train").top1().tolist() == [0, 1, 2]
    assert [r.method for r in server.requests] == ["GET", "POST"]
    assert server.posts[0].headers["authorization"] == f"Bearer {CANARY}"
    assert book.spent == 3


def test_https_without_a_health_check_fails_on_the_first_query_without_reaching_the_server(canary, local_ca):
    with ScriptedServer([Reply(body={"scores": [[1, 0, 0]]})], tls=local_ca) as server:
        with template(server.url, key_env=KEY_ENV, retries=0) as remote:
            with pytest.raises(EndpointError) as caught:
                remote.query(batch(1))
    one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY)
    assert server.requests == []


def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(tmp_path):
    wrong = LocalCA(tmp_path, hosts=("other.invalid",))
    with ScriptedServer([ONE_HOT], tls=wrong) as server:
        with pytest.raises(ValueError) as caught:
            with connected(server.url, ca_bundle=wrong.ca_file):
                pass
    one_sentence(caught.value)
    assert server.requests == []


# ---- keys --------------------------------------------------------------------------------------
def write_key(path, text: str, mode: int) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666], ids=oct)
def test_a_key_file_others_can_read_is_refused(tmp_path, mode):
    path = write_key(tmp_path / "key", CANARY, mode)
    with pytest.raises(ValueError, match=rf"chmod 600\), got mode {mode:04o}") as caught:
        ApiKey.load(file=path)
    one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_an_owner_only_key_file_is_read(tmp_path, mode):
    key = ApiKey.load(file=write_key(tmp_path / "key", CANARY + "\n", mode))
    assert key.headers() == {"Authorization": f"Bearer {CANARY}"}
    assert key.source == f"file:{tmp_path / 'key'}"


def test_an_unset_or_empty_key_variable_is_refused(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ScriptedServer([ONE_HOT]) as server:
        with pytest.raises(ValueError, match=f"environment variable {KEY_ENV}, got it unset or empty") as caught:
            with connected(server.url, key_env=KEY_ENV):
                pass
    one_sentence(caught.value)
    assert server.requests == []                              # refused before the health check
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(ValueError, match="unset or empty"):
        ApiKey.load(env=KEY_ENV)


def test_a_key_from_both_a_variable_and_a_file_is_refused(tmp_path, canary):
    with pytest.raises(ValueError, match="got both") as caught:
        ApiKey.load(env=KEY_ENV, file=write_key(tmp_path / "key", CANARY, 0o600))
    one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY)


def test_no_key_named_means_no_key():
    assert ApiKey.load() is None


def test_a_key_file_with_more_than_one_line_never_shows_the_key(tmp_path):
    # a second line (a note, a rotated key) would make a header value requests refuses, quoting it
    first, second = CANARY, "sk-OLD-KEY-0123456789abcdef"
    path = write_key(tmp_path / "key", f"{first}\n{second}\n", 0o600)
    with ScriptedServer([Reply(body={"scores": [[1, 0, 0]]})]) as server:
        with pytest.raises(ValueError) as caught:
            with template(server.url, key_file=path) as remote:
                remote.query(batch(1))
    one_sentence(caught.value)
    assert_keeps_secret(caught.value, first, second)
    assert server.requests == []


def test_a_key_over_plain_http_to_another_host_is_refused_before_connecting(canary, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a request was attempted")

    monkeypatch.setattr(requests.Session, "request", no_network)
    with pytest.raises(ValueError, match=r"expected an https:// URL to send an API key to example\.invalid") as caught:
        HttpBackend.from_config("http://example.invalid", protocol="v2", model_name="m", input_shape=[2],
                                num_classes=CLASSES, key_env=KEY_ENV)
    one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY)


def test_a_key_over_plain_http_to_localhost_is_allowed(canary):
    with ScriptedServer([ONE_HOT]) as server:
        with connected(f"http://localhost:{server.port}", key_env=KEY_ENV) as remote:
            assert remote.query(batch(2)).top1().tolist() == [0, 1]
    assert server.posts[0].headers["authorization"] == f"Bearer {CANARY}"


def test_credentials_in_the_url_are_refused():
    with pytest.raises(ValueError, match="without user:password") as caught:
        Transport("https://user:hunter2@models.example.com")
    assert_keeps_secret(caught.value, "hunter2")


def test_a_key_is_never_shown_or_pickled(canary):
    key = ApiKey.load(env=KEY_ENV)
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert CANARY not in text and KEY_ENV in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    transport = Transport("https://models.example.com", key=key)
    assert CANARY not in repr(vars(transport))                # the ApiKey's repr hides it there too


@pytest.mark.parametrize("options, header, value", [
    ({}, "authorization", f"Bearer {CANARY}"),
    ({"key_header": "X-API-Key"}, "x-api-key", CANARY),
    ({"key_header": "Authorization", "key_prefix": "Token "}, "authorization", f"Token {CANARY}"),
])
def test_the_key_reaches_the_server_in_the_configured_header(options, header, value, canary):
    with ScriptedServer([ONE_HOT]) as server, connected(server.url, key_env=KEY_ENV, **options) as remote:
        remote.query(batch(1))
    (get,) = [r for r in server.requests if r.method == "GET"]
    (post,) = server.posts
    assert post.headers[header] == value and get.headers[header] == value
    if header != "authorization":
        assert "authorization" not in post.headers


def test_a_server_echoing_the_key_in_an_error_body_does_not_put_it_in_the_message(canary):
    # the key straddles the 200-character excerpt: no prefix of it may survive either
    echo = Reply(401, {}, "x" * (200 - len(CANARY) // 2) + CANARY)
    with ScriptedServer([echo]) as server, connected(server.url, key_env=KEY_ENV) as remote:
        with pytest.raises(EndpointError) as caught:
            remote.query(batch(1))
    assert "got HTTP 401" in one_sentence(caught.value)
    assert_keeps_secret(caught.value, CANARY, CANARY[:len(CANARY) // 2])


def test_a_server_echoing_the_key_in_a_200_body_does_not_put_it_in_the_message(canary):
    for prefix in ("", "y" * 60):                             # whole, and cut by the 80-character sample
        echo = Reply(body={"error": prefix + CANARY})
        with ScriptedServer([echo]) as server, connected(server.url, key_env=KEY_ENV) as remote:
            with pytest.raises(ResponseError) as caught:
                remote.query(batch(1))
        one_sentence(caught.value)
        assert_keeps_secret(caught.value, CANARY, CANARY[:12])


# ---- protocols: valid answers ------------------------------------------------------------------
NAMES = ["cat", "dog", "fox"]
LOGITS = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
PROBS = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]


def v2_outputs(*outputs) -> dict:
    return {"model_name": "m", "outputs": [{"name": n, "datatype": d, "shape": list(np.shape(v)),
                                            "data": np.ravel(np.asarray(v, dtype=object)).tolist()}
                                           for n, d, v in outputs]}


def check(p: Prediction, kind: str, scores=None, labels=None) -> None:
    assert isinstance(p, Prediction) and p.kind == kind and p.num_classes == CLASSES
    if scores is None:
        assert p.scores is None
    else:
        assert p.scores.dtype == np.float32
        np.testing.assert_allclose(p.scores, np.asarray(scores, np.float32), rtol=1e-6)
    if labels is None:
        assert p.labels is None
    else:
        assert p.labels.dtype == np.int64 and p.labels.tolist() == labels


TOP_LABELS_UNSORTED, TOP_SCORES_UNSORTED = [[2, 0], [1, 2]], [[0.1, 0.7], [0.8, 0.9]]
TOP_LABELS, TOP_SCORES = [[0, 2], [2, 1]], [[0.7, 0.1], [0.9, 0.8]]      # best first
TEMPLATE = dict(path="/api", scores_path="result.scores", topk_path="result.top", labels_path="result.0")

VALID = {
    "v2 logits": (V2("m"), Contract("logits", 3), v2_outputs(("logits", "FP32", LOGITS)), LOGITS, None),
    "v2 probs": (V2("m"), Contract("probs", 3), v2_outputs(("probs", "FP32", PROBS)), PROBS, None),
    "v2 topk": (V2("m"), Contract("topk", 3, k=2),
                v2_outputs(("labels", "INT64", TOP_LABELS_UNSORTED), ("scores", "FP32", TOP_SCORES_UNSORTED)),
                TOP_SCORES, TOP_LABELS),
    "v2 label": (V2("m"), Contract("label", 3), v2_outputs(("labels", "INT64", [2, 0])), None, [[2], [0]]),
    "v2 label names": (V2("m"), Contract("label", 3, labels=NAMES),
                       v2_outputs(("labels", "BYTES", ["fox", "cat"])), None, [[2], [0]]),
    "v2 chosen output": (V2("m", scores_output="logits"), Contract("logits", 3),
                         v2_outputs(("embedding", "FP32", [[1.0], [2.0]]), ("logits", "FP32", LOGITS)),
                         LOGITS, None),
    "v2 fp64 for fp32": (V2("m"), Contract("logits", 3), v2_outputs(("logits", "FP64", LOGITS)), LOGITS, None),
    "v2 integer scores": (V2("m"), Contract("logits", 3), v2_outputs(("logits", "INT32", [[1, 0, 0], [0, 0, 1]])),
                          [[1, 0, 0], [0, 0, 1]], None),
    "v2 kserve nulls": (V2("m"), Contract("logits", 3),
                        {"model_name": "m", "model_version": None, "id": None, "parameters": None,
                         "outputs": [{"name": "o", "datatype": "FP32", "shape": [2, 3], "parameters": None,
                                      "data": np.ravel(LOGITS).tolist()}]}, LOGITS, None),
    "tfserving logits": (TFServing("m"), Contract("logits", 3), {"predictions": LOGITS}, LOGITS, None),
    "tfserving probs": (TFServing("m"), Contract("probs", 3), {"predictions": PROBS}, PROBS, None),
    "tfserving topk": (TFServing("m"), Contract("topk", 3, k=2),
                       {"predictions": [{"labels": l, "scores": s}
                                        for l, s in zip(TOP_LABELS_UNSORTED, TOP_SCORES_UNSORTED)]},
                       TOP_SCORES, TOP_LABELS),
    "tfserving label": (TFServing("m"), Contract("label", 3), {"predictions": [2, 0]}, None, [[2], [0]]),
    "tfserving named outputs": (TFServing("m", scores_output="probabilities"), Contract("probs", 3),
                                {"predictions": [{"probabilities": p, "classes": 0} for p in PROBS]}, PROBS, None),
    "mlflow logits": (MLflow(), Contract("logits", 3), {"predictions": LOGITS}, LOGITS, None),
    "mlflow label names": (MLflow(), Contract("label", 3, labels=NAMES), {"predictions": ["dog", "fox"]},
                           None, [[1], [2]]),
    "mlflow topk names": (MLflow(), Contract("topk", 3, k=2, labels=NAMES),
                          {"predictions": [{"labels": ["fox", "cat"], "scores": [0.1, 0.7]},
                                           {"labels": ["dog", "fox"], "scores": [0.8, 0.9]}]},
                          TOP_SCORES, TOP_LABELS),
    "template scores": (Template(**TEMPLATE), Contract("logits", 3), {"result": {"scores": LOGITS}}, LOGITS, None),
    "template probs": (Template(**TEMPLATE), Contract("probs", 3), {"result": {"scores": PROBS}}, PROBS, None),
    "template topk": (Template(**TEMPLATE), Contract("topk", 3, k=2, labels=NAMES),
                      {"result": {"top": [[{"label": "fox", "score": 0.1}, {"label": "cat", "score": 0.7}],
                                          [{"label": "dog", "score": 0.8}, {"label": "fox", "score": 0.9}]]}},
                      TOP_SCORES, TOP_LABELS),
    "template label": (Template(**TEMPLATE), Contract("label", 3), {"result": [[2, 0]]}, None, [[2], [0]]),
}


@pytest.mark.parametrize("case", VALID)
def test_a_valid_answer_decodes_to_the_right_prediction(case):
    protocol, contract, body, scores, labels = VALID[case]
    check(protocol.decode(body, 2, contract), contract.kind, scores, labels)


def test_probabilities_within_the_documented_tolerance_are_accepted():
    near = [[0.5, 0.3, 0.2 + PROBABILITY_TOLERANCE * 0.9], [1.0 + PROBABILITY_TOLERANCE * 0.5, 0.0, 0.0]]
    p = TFServing("m").decode({"predictions": near}, 2, Contract("probs", 3))
    np.testing.assert_allclose(p.scores, np.asarray(near, np.float32))


# ---- protocols: answers refused, each in one sentence ------------------------------------------
MALFORMED = {
    "v2 shape does not hold the data": (V2("m"), Contract("logits", 3),
                                        {"outputs": [{"name": "o", "datatype": "FP32", "shape": [2, 3], "data": [1, 2]}]},
                                        "expected 6 values"),
    "v2 too many classes": (V2("m"), Contract("logits", 3), v2_outputs(("o", "FP32", [[0, 0, 0, 0]] * 2)),
                            r"shape \(2, 3\), got \(2, 4\)"),
    "v2 too few examples": (V2("m"), Contract("logits", 3), v2_outputs(("o", "FP32", [[0, 0, 0]])),
                            r"shape \(2, 3\), got \(1, 3\)"),
    "v2 no shape": (V2("m"), Contract("logits", 3),
                    {"outputs": [{"name": "o", "datatype": "FP32", "data": [0] * 6}]}, "a shape list"),
    "v2 text scores": (V2("m"), Contract("logits", 3), v2_outputs(("o", "BYTES", [["a"] * 3] * 2)),
                       "numeric V2 datatype"),
    "v2 nan": (V2("m"), Contract("logits", 3), v2_outputs(("o", "FP32", [[math.nan, 0, 0], [0, 0, 0]])),
               "finite scores, got NaN or infinity"),
    "v2 infinity": (V2("m"), Contract("logits", 3), v2_outputs(("o", "FP32", [[math.inf, 0, 0], [0, 0, 0]])),
                    "finite scores"),
    "v2 beyond float32": (V2("m"), Contract("logits", 3), v2_outputs(("o", "FP64", [[1e39, 0, 0], [0, 0, 0]])),
                          "finite"),
    "v2 label-only when scores expected": (V2("m"), Contract("logits", 3), v2_outputs(("labels", "INT64", [2, 0])),
                                           r"shape \(2, 3\), got \(2,\)"),
    "v2 several outputs, none chosen": (V2("m"), Contract("logits", 3),
                                        v2_outputs(("a", "FP32", LOGITS), ("b", "FP32", LOGITS)),
                                        r"one output or backend.options.scores_output / labels_output to choose, got outputs \['a', 'b'\]"),
    "v2 chosen output missing": (V2("m", scores_output="probs"), Contract("probs", 3),
                                 v2_outputs(("a", "FP32", PROBS), ("b", "FP32", PROBS)),
                                 r"an output named 'probs', got \['a', 'b'\]"),
    "v2 topk scores missing": (V2("m"), Contract("topk", 3, k=2), v2_outputs(("labels", "INT64", TOP_LABELS)),
                               "an output named 'scores'"),
    "v2 error body": (V2("m"), Contract("logits", 3), {"error": "model m is not ready"}, "got an error"),
    "v2 names with a wrong shape": (V2("m"), Contract("label", 3, labels=NAMES),
                                    {"outputs": [{"name": "labels", "datatype": "BYTES", "shape": [3],
                                                  "data": ["cat", "dog"]}]}, "expected"),
    "v2 names with a garbage shape": (V2("m"), Contract("label", 3, labels=NAMES),
                                      {"outputs": [{"name": "labels", "datatype": "BYTES", "shape": ["x"],
                                                    "data": ["cat", "dog"]}]}, "expected"),
    "v2 not an object": (V2("m"), Contract("logits", 3), [1, 2, 3], "a JSON object with a list 'outputs'"),
    "probs not summing to 1": (TFServing("m"), Contract("probs", 3), {"predictions": [[0.5, 0.3, 0.1], PROBS[1]]},
                               "summing to 1"),
    "probs just beyond the tolerance": (TFServing("m"), Contract("probs", 3),
                                        {"predictions": [[0.5, 0.3, 0.2 + 2 * PROBABILITY_TOLERANCE], PROBS[1]]},
                                        "summing to 1"),
    "probs negative": (TFServing("m"), Contract("probs", 3), {"predictions": [[1.2, -0.2, 0.0], PROBS[1]]},
                       r"values in \[-0.2, 1.2\]"),
    "logits as probs": (TFServing("m"), Contract("probs", 3), {"predictions": LOGITS}, "summing to 1"),
    "ragged rows": (TFServing("m"), Contract("logits", 3), {"predictions": [[1, 2, 3], [1, 2]]}, "ragged"),
    "booleans among scores": (TFServing("m"), Contract("logits", 3), {"predictions": [[True, 0.5, 0.0], [0, 0, 1]]},
                              "numbers"),
    "too few predictions": (TFServing("m"), Contract("logits", 3), {"predictions": [LOGITS[0]]},
                            "expected 2 predictions, got 1"),
    "tfserving error body": (TFServing("m"), Contract("logits", 3), {"error": "Input size mismatch"},
                             "got an error: 'Input size mismatch'"),
    "label out of range": (TFServing("m"), Contract("label", 3), {"predictions": [3, 0]},
                           r"integer labels in \[0, 3\), got values in \[0, 3\]"),
    "negative label": (TFServing("m"), Contract("label", 3), {"predictions": [-1, 0]}, r"in \[0, 3\)"),
    "fractional label": (TFServing("m"), Contract("label", 3), {"predictions": [1.5, 0]}, r"integer labels"),
    "string labels without names": (MLflow(), Contract("label", 3), {"predictions": ["dog", "fox"]},
                                    "set backend.options.labels to map names"),
    "a null among names": (MLflow(), Contract("label", 3, labels=NAMES), {"predictions": [None, "dog"]},
                           "configured class names, got None"),
    "a name not configured": (MLflow(), Contract("label", 3, labels=NAMES), {"predictions": ["dog", "wolf"]},
                              "configured class names, got 'wolf'"),
    "label-only rows when scores expected": (MLflow(), Contract("logits", 3), {"predictions": [2, 0]},
                                             r"shape \(2, 3\), got \(2,\)"),
    "topk as plain rows": (MLflow(), Contract("topk", 3, k=2), {"predictions": LOGITS}, "dicts for top-k"),
    "topk with k wrong": (TFServing("m"), Contract("topk", 3, k=2),
                          {"predictions": [{"labels": [0], "scores": [0.5]}] * 2}, r"shape \(2, 2\)"),
    "topk nan score": (TFServing("m"), Contract("topk", 3, k=2),
                       {"predictions": [{"labels": [0, 1], "scores": [math.nan, 0.5]}] * 2}, "finite"),
    "topk output missing": (TFServing("m"), Contract("topk", 3, k=2),
                            {"predictions": [{"labels": [0, 1]}] * 2}, "the output 'scores' in every prediction"),
    "template path missing": (Template(**TEMPLATE), Contract("logits", 3), {"error": "quota"},
                              "the path 'result.scores'"),
    "template entry without score": (Template(**TEMPLATE), Contract("topk", 3, k=2, labels=NAMES),
                                     {"result": {"top": [[{"label": "cat"}, {"label": "dog"}]] * 2}},
                                     "the key 'score'"),
    "template k wrong": (Template(**TEMPLATE), Contract("topk", 3, k=2, labels=NAMES),
                         {"result": {"top": [[{"label": "cat", "score": 1}]] * 2}}, "expected 2 entries per example"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_answer_is_refused_in_one_sentence(case):
    protocol, contract, body, pattern = MALFORMED[case]
    with pytest.raises(ResponseError, match=pattern) as caught:
        protocol.decode(body, 2, contract)
    one_sentence(caught.value)


def test_quirks_of_real_servers_pass_end_to_end():
    """KServe's nulls and FP64 outputs for FP32 inputs, from a real server."""
    answer = v2_answer(np.eye(CLASSES)[[2, 0]], datatype="FP64", model_version=None, parameters=None)
    answer["outputs"][0]["parameters"] = None
    with ScriptedServer([Reply(body=answer)]) as server, connected(server.url) as remote:
        p = remote.query(batch(2))
    assert p.scores.dtype == np.float32 and p.top1().tolist() == [2, 0]
    sent = server.posts[0].json()["inputs"][0]
    assert sent["datatype"] == "FP32" and sent["shape"] == [2, 2] and sent["name"] == "input"


def test_nan_written_by_the_server_is_refused_end_to_end():
    body = b'{"outputs": [{"name": "o", "datatype": "FP32", "shape": [1, 3], "data": [NaN, 0, 0]}]}'
    with ScriptedServer([Reply(body=body), ONE_HOT]) as server, connected(server.url) as remote:
        book = Ledger(remote, budget=None)
        with pytest.raises(ResponseError, match="finite scores"):
            book.query(batch(1), "train")
    assert len(server.posts) == 1 and tally(book) == (1, 0, 1)


# ---- protocols: anything at all is a Prediction that keeps the contract, or a ResponseError ---
OUTPUT_NAMES = ["logits", "labels", "scores", "probs", "o"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 5),
                      st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NAMES), st.text(max_size=4))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(OUTPUT_NAMES), st.text(max_size=4)),
                                                 inner, max_size=4)), max_leaves=16)
# mostly values a model could answer, sometimes one that must be refused
special = st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e39, 2 ** 64, True, None, "fox", -1, 3, 1.5])
number = st.one_of(st.floats(0, 1), st.floats(-3, 3), st.integers(0, 2), st.floats(0, 1), special)
label = st.one_of(st.integers(0, 2), st.integers(0, 2), st.sampled_from(NAMES), special)
SHAPES = [(2, 3), (2, 2), (2,), (2, 1), (1, 3), (3, 2), (2, 3, 1)]
CONTRACTS = [Contract("logits", 3), Contract("probs", 3), Contract("topk", 3, k=2), Contract("label", 3),
             Contract("topk", 3, k=2, labels=NAMES), Contract("label", 3, labels=NAMES)]


@st.composite
def grid(draw, rows: int, cols: int | None, element) -> list:
    """Nested lists of ``element``, mostly of shape (rows, cols) (or (rows,) when cols is None)."""
    wanted = (rows,) if cols is None else (rows, cols)
    shape = wanted if draw(st.integers(0, 4)) else draw(st.sampled_from(SHAPES))
    values = draw(st.lists(element, min_size=math.prod(shape), max_size=math.prod(shape)))
    if element is number and draw(st.integers(0, 2)) == 0:   # rows that are probabilities
        values = [abs(v) if isinstance(v, float) else v for v in values]
        if all(isinstance(v, float) and math.isfinite(v) for v in values) and len(shape) == 2:
            table = np.asarray(values).reshape(shape) + 1e-3
            return (table / table.sum(axis=1, keepdims=True)).tolist()
    return np.asarray(values, dtype=object).reshape(shape).tolist()


def v2_output(draw, name: str, values: list, integer: bool) -> dict:
    """A V2 output holding ``values``; sometimes its datatype or shape is wrong."""
    array = np.asarray(values, dtype=object)
    names_ = array.size and isinstance(array.ravel()[0], str)
    datatype = "BYTES" if names_ else ("INT64" if integer else draw(st.sampled_from(["FP32", "FP64"])))
    entry = {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}
    corrupt = draw(st.integers(0, 5))
    if corrupt == 1:
        entry["datatype"] = draw(st.sampled_from(["BYTES", "BOOL", "fp32", "STRING", ""]))
    elif corrupt == 2:
        entry["shape"] = draw(st.one_of(st.lists(st.integers(-1, 4), max_size=3), json_value))
    elif corrupt == 3:
        entry["data"] = draw(json_value)
    return entry


@st.composite
def answers(draw):
    """(protocol, contract, body): a body meant for the contract, corrupted here and there; or any
    JSON value at all."""
    contract = draw(st.sampled_from(CONTRACTS))
    family = draw(st.sampled_from(["v2", "rows", "template"]))
    protocol = draw(st.sampled_from({"v2": [V2("m"), V2("m", scores_output="scores")],
                                     "rows": [TFServing("m"), MLflow()], "template": [Template(**TEMPLATE)]}[family]))
    if draw(st.integers(0, 5)) == 0:
        return protocol, contract, draw(json_value)
    k = contract.k if contract.kind == "topk" else 1
    scores = draw(grid(2, CLASSES if contract.kind in ("logits", "probs") else k, number))
    labels = draw(grid(2, k if contract.kind == "topk" else None, label))
    if family == "v2":
        outputs = [v2_output(draw, "scores" if protocol.scores_output or contract.kind == "topk"
                             else draw(st.sampled_from(OUTPUT_NAMES)), scores, False)]
        if contract.kind in ("topk", "label"):
            outputs = outputs[:contract.kind == "topk"] + [v2_output(draw, "labels", labels, True)]
        outputs += draw(st.lists(st.builds(lambda n, v: {"name": n, "datatype": "FP32", "shape": [len(v)], "data": v},
                                           st.sampled_from(OUTPUT_NAMES), st.lists(number, max_size=3)), max_size=1))
        body = {"outputs": draw(st.permutations(outputs))}
        for field_ in draw(st.sets(st.sampled_from(["model_version", "parameters", "id"]))):
            body[field_] = None
    elif family == "rows":
        if contract.kind == "topk" or draw(st.booleans()):
            body = {"predictions": [{"scores": s, "labels": l} for s, l in zip(scores, labels)]}
        else:
            body = {"predictions": labels if contract.kind == "label" else scores}
    else:
        top = [[{"label": l, "score": s} for l, s in zip(ls if isinstance(ls, list) else [ls],
                                                         ss if isinstance(ss, list) else [ss])]
               for ls, ss in zip(labels, scores)]
        body = {"result": {"scores": scores, "top": top, "0": labels}}
    if draw(st.integers(0, 9)) == 0:
        body["error"] = draw(json_value)
    return protocol, contract, body


def assert_keeps_contract(p: Prediction, contract: Contract, batch_size: int) -> None:
    assert isinstance(p, Prediction) and p.kind == contract.kind and p.num_classes == CLASSES
    if contract.kind in ("logits", "probs"):
        assert p.labels is None and p.scores.shape == (batch_size, CLASSES) and p.scores.dtype == np.float32
        assert np.isfinite(p.scores).all()
        if contract.kind == "probs":
            tol = PROBABILITY_TOLERANCE + 1e-6
            assert p.scores.min() >= -tol and p.scores.max() <= 1 + tol
            assert np.abs(p.scores.astype(np.float64).sum(axis=1) - 1).max() <= tol
        return
    width = contract.k if contract.kind == "topk" else 1
    assert p.labels.shape == (batch_size, width) and p.labels.dtype.kind in "iu"
    assert p.labels.min() >= 0 and p.labels.max() < CLASSES
    if contract.kind == "topk":
        assert p.scores.shape == (batch_size, width) and p.scores.dtype == np.float32
        assert np.isfinite(p.scores).all() and (np.diff(p.scores, axis=1) <= 0).all()
    else:
        assert p.scores is None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
def test_decode_of_anything_keeps_the_contract_or_raises_a_response_error(answer):
    protocol, contract, body = answer
    try:
        p = protocol.decode(body, 2, contract)
    except ResponseError as error:
        assert "\n" not in str(error) and str(error).startswith("expected")
    else:
        assert_keeps_contract(p, contract, 2)


# ---- concurrency -------------------------------------------------------------------------------
def test_requests_run_concurrently_up_to_the_limit_and_answers_keep_the_input_order():
    classes, size = 32, 32                                     # 8 requests of 4
    four_at_once = threading.Barrier(4, timeout=5)

    def model(request: Received) -> Reply:
        x = v2_inputs(request)
        first = int(x[0, 0])
        if first < 16:                                        # the first four requests wait for each other
            four_at_once.wait()
        # later chunks answer sooner, so answers arrive out of order
        return Reply(body=v2_answer(np.eye(classes)[x[:, 0].astype(int)]), delay=0.05 * (1 - first / size))

    x = np.zeros((size, 2), np.float32)
    x[:, 0] = np.arange(size)
    with ScriptedServer([model]) as server, \
            connected(server.url, num_classes=classes, max_batch=4, concurrency=4) as remote:
        book = Ledger(remote, budget=None)
        answer = book.query(x, "train")
    assert answer.top1().tolist() == list(range(size))
    assert server.max_in_flight == 4                          # four at once (the barrier), never five
    assert sorted(int(v2_inputs(r)[0, 0]) for r in server.posts) == list(range(0, size, 4))
    assert tally(book) == (size, 0, 8)


def test_concurrency_one_never_overlaps_requests():
    classes, size = 32, 16

    def model(request: Received) -> Reply:
        x = v2_inputs(request)
        return Reply(body=v2_answer(np.eye(classes)[x[:, 0].astype(int)]), delay=0.05)

    x = np.zeros((size, 2), np.float32)
    x[:, 0] = np.arange(size)
    with ScriptedServer([model]) as server, \
            connected(server.url, num_classes=classes, max_batch=4, concurrency=1) as remote:
        answer = remote.query(x)
    assert answer.top1().tolist() == list(range(size))
    assert len(server.posts) == 4 and server.max_in_flight == 1


@pytest.mark.parametrize("options, honours", [({}, False), ({"idempotent": True}, True),
                                              ({"idempotent": True, "idempotency_header": ""}, False)])
def test_the_options_set_the_declared_capabilities(options, honours):
    """Remote with a probe of one example (RemoteBackend's declaration); concurrency and
    idempotency from the options (no header: no key is sent, so none can be honoured)."""
    with template("http://127.0.0.1:9", concurrency=3, **options) as remote:   # no health check: nothing sent
        assert remote.capabilities == Capabilities(remote=True, probe_examples=1, concurrency=3,
                                                   honours_idempotency=honours)
        described = remote.describe()
    assert (described["concurrency"], described["honours_idempotency"]) == (3, honours)


def test_the_key_goes_with_every_attempt_of_its_call_and_covers_one_call_only():
    key = "ab" * 32
    with ScriptedServer([Reply(503, {"retry-after-ms": "1"}, b"busy"), ONE_HOT]) as server, \
            connected(server.url, max_batch=4) as remote:
        told: list[tuple[int, bool]] = []
        answer = remote.query(batch(3), on_send=lambda n, retry=False: told.append((n, retry)), key=key)
        with pytest.raises(ValueError, match="expected at most 4 examples under one idempotency key, got 5"):
            remote.query(batch(5), key=key)
    assert answer.top1().tolist() == [0, 1, 2] and told == [(3, False), (3, True)]
    assert [r.headers["idempotency-key"] for r in server.posts] == [key, key]   # the refused call sent nothing


@pytest.mark.parametrize("options, missing", [({}, "no input_shape and no num_classes"),
                                              ({"input_shape": [4]}, "no num_classes"),
                                              ({"num_classes": 3}, "no input_shape")])
def test_a_missing_input_shape_or_class_count_is_named_before_any_request(options, missing):
    with pytest.raises(ValueError) as refused:
        HttpBackend.from_config("http://127.0.0.1:9", protocol="v2", model_name="m", **options)
    assert str(refused.value).endswith(f"so they are not guessed), got {missing}")
