"""One endpoint's HTTP: timeouts, retries, rate limit, circuit breaker, same-origin redirects.

Every attempt whose bytes leave the machine is reported through ``on_attempt`` before it
is sent, so the ledger counts it as possibly billed — retries included. Several threads
share one Transport (bounded concurrency); each thread keeps its own ``requests.Session``.

Every request, redirected or not, is checked before it leaves to go to the configured origin
(scheme, host, port), without user:password and with a path that cannot be read as anything
else (``paths.py``): the key in its headers goes nowhere else.

A call that fails ends in one of two ways. ``EndpointUnavailable`` (the CLI's exit code 3, try
again later): the endpoint is down or busy. ``ContractError`` (a refusal, exit code 2): the
endpoint refuses the request itself — a 4xx, or the same error answer to every attempt from an
endpoint that has not answered any query yet — so resending it cannot help.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests

from blackbox_reprog.backends.base import BackendUnavailable
from blackbox_reprog.errors import Refusal

from .keys import ApiKey
from .paths import path_problem
from .retry import retry_delay, says_later, should_retry

METHOD_KEEPING_REDIRECTS = (307, 308)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class EndpointError(RuntimeError):
    """The endpoint did not give a usable answer (after the retries the policy allows)."""


class EndpointUnavailable(EndpointError, BackendUnavailable):
    """The endpoint is down or busy (the circuit breaker opened, or a call's retries ran out on
    failures that may pass): the run stops, to be resumed later."""


class ContractError(EndpointError, Refusal):
    """The endpoint refuses the request itself, so sending it again cannot help: the config
    must change. Its attempts were sent, and stay booked."""


class ResponseError(EndpointError):
    """A 200 answer that breaks the contract (paid for: recorded, never retried)."""


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), port


def shown(url: str) -> str:
    """A URL fit for a message: without any user:password part."""
    parts = urlsplit(url)          # no user:password, no query string (either may carry a secret)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()


@dataclass(frozen=True)
class Failure:
    """One failed attempt: what a message says of it, and what makes two failures the same."""

    text: str                      # "HTTP 500: <the start of the body>", "timeout (ReadTimeout)"
    status: int | None = None      # None: no answer at all
    body: bytes = b""
    later: bool = False            # the answer itself says "try later" (its status, a Retry-After)


def _first_last(first: str, last: str) -> str:
    """The first failure of a run of them (often the telling one) and the last."""
    return f"last: {last}" if first == last else f"first: {first}; last: {last}"


class RateLimit:
    """At most ``per_second`` requests a second across threads (0: no limit)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(start - now, 0.0))


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failed attempts across all requests; stays open."""

    def __init__(self, threshold: int):
        self.threshold, self.failures, self.first, self.last = int(threshold), 0, "", ""
        self._lock = threading.Lock()

    def check(self, url: str) -> None:
        if self.threshold and self.failures >= self.threshold:
            raise EndpointUnavailable(f"expected {url} to answer, got {self.failures} failed attempts in a row "
                                      f"({_first_last(self.first, self.last)}); stopping before spending more")

    def record(self, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.failures = 0
            else:
                self.failures, self.last = self.failures + 1, failure
                self.first = failure if self.failures == 1 else self.first


class Transport:
    def __init__(self, base_url: str, *, key: ApiKey | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0, retries: int = 5, retry_after_cap: float = 60.0,
                 rate_limit: float = 0.0, breaker_failures: int = 10, ca_bundle: str = "",
                 max_redirects: int = 3, seed: int | None = None):
        try:
            parts = urlsplit(base_url)
        except ValueError as error:                         # e.g. a broken IPv6 address
            raise Refusal(f"expected an http:// or https:// URL, got one that does not parse ({error})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refusal(f"expected an http:// or https:// URL, got {shown(base_url)!r}")
        if parts.username or parts.password:
            raise Refusal("expected a URL without user:password (give the key through key_env or "
                          f"key_file), got credentials in {shown(base_url)!r}")
        if key is not None and parts.scheme == "http" and parts.hostname.lower() not in LOOPBACK_HOSTS:
            raise Refusal(f"expected an https:// URL to send an API key to {parts.hostname}, got plain "
                          "http:// (allowed only for 127.0.0.1 and localhost)")
        if parts.query or parts.fragment or base_url.endswith(("?", "#")):   # a path joined after them is no path
            raise Refusal(f"expected a base URL without a ?query or #fragment, got one after {shown(base_url)!r}")
        self.base_url = base_url.rstrip("/")
        try:
            self.origin = origin(self.base_url)
        except ValueError:                                  # a port out of range
            raise Refusal(f"expected an http:// or https:// URL, got {shown(base_url)!r}") from None
        self.key = key
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.retries, self.retry_after_cap = int(retries), float(retry_after_cap)
        self.verify: bool | str = ca_bundle or True            # TLS verified; a private CA may be named
        self.max_redirects = int(max_redirects)
        self.rate_limit = RateLimit(float(rate_limit))
        self.breaker = CircuitBreaker(breaker_failures)
        self._rng = random.Random(seed)
        self._answered = False       # has any query had its 200? Until then a repeated refusal is a ContractError
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    # ---- public --------------------------------------------------------------------------
    def url(self, path: str) -> str:
        """The URL of ``path`` on this endpoint; refused, before anything is sent, unless it stays
        on the configured origin with a plain path (the protocols name the option at fault earlier)."""
        problem = path_problem(path) or self._target_problem(self.base_url + path)
        if problem:
            raise Refusal(f"expected a request path on {shown(self.base_url)}, got {path!r}, which {problem}")
        return self.base_url + path

    def get(self, path: str) -> requests.Response:
        """One GET (health, metadata): no query is spent, so no ledger and no retries."""
        return self._send("GET", self.url(path), None)

    def post(self, path: str, body: bytes, on_attempt: Callable[[bool], None],
             headers: dict[str, str] | None = None) -> requests.Response:
        """POST until a 200 arrives, retrying what the policy allows; ``on_attempt(is_retry)`` is
        called before each attempt leaves (it may refuse by raising, e.g. over budget)."""
        url = self.url(path)
        failures: list[Failure] = []
        for retry in range(self.retries + 1):
            self.breaker.check(shown(url))
            self.rate_limit.wait()
            on_attempt(retry > 0)
            response = None
            try:
                response = self._send("POST", url, body, on_attempt, headers)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as error:   # a body cut mid-way is a lost connection
                failure = Failure(self._describe(error))
            except requests.RequestException as error:
                raise EndpointError(f"expected an answer from {shown(url)}, got {type(error).__name__}") from None
            else:
                if response.status_code == 200:
                    self.breaker.record(None)
                    self._answered = True
                    return response
                failure = self._failure(response)
                if not should_retry(response.status_code):
                    self.breaker.record(None)           # the endpoint is up; the request is wrong
                    raise ContractError(f"expected HTTP 200 from {shown(url)}, got {failure.text}")
            failures.append(failure)
            self.breaker.record(failure.text)
            if retry == self.retries:
                raise self._gave_up(shown(url), failures)
            with self._lock:
                delay = retry_delay(None if response is None else response.headers, retry,
                                    cap=self.retry_after_cap, rng=self._rng)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced, for a message that quotes the server."""
        return self.key.scrub(text) if self.key is not None else text

    def scrub_bytes(self, content: bytes) -> bytes:
        """A server's raw answer with the key replaced, before any of it can reach a message."""
        return self.key.scrub_bytes(content) if self.key is not None else content

    # ---- one request, redirects followed within the origin only -----------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False        # no netrc credentials or env proxies slipped in
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _send(self, method: str, url: str, body: bytes | None,
              on_attempt: Callable[[bool], None] | None = None,
              extra: dict[str, str] | None = None) -> requests.Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **(extra or {})}
        if self.key is not None:
            headers.update(self.key.headers())
        first, came_from = url, None           # came_from: the URL whose answer redirected here
        for _ in range(self.max_redirects + 1):
            self._check_target(url, came_from)
            if came_from and on_attempt:       # the body is sent again: book it like a retry
                on_attempt(True)
            try:
                response = self._session().request(method, url, data=body, headers=headers, timeout=self.timeout,
                                                   allow_redirects=False, verify=self.verify)
            except requests.exceptions.SSLError:     # the health GET and the queries say the same
                raise EndpointError(f"expected a TLS certificate for {method} {shown(url)} that verifies, got one "
                                    "that does not (name a private CA with backend.options.ca_bundle)") from None
            if not response.is_redirect:
                return response
            if response.status_code not in METHOD_KEEPING_REDIRECTS and method != "GET":
                raise EndpointError(f"expected a {method} redirect that keeps its method (307 or 308), "
                                    f"got {response.status_code} from {shown(url)}")
            came_from, url = url, urljoin(url, response.headers.get("location", ""))
        raise EndpointError(f"expected an answer from {shown(first)}, got more than {self.max_redirects} redirects")

    def _check_target(self, url: str, came_from: str | None) -> None:
        """Every request passes here before it leaves: to the configured origin, without
        user:password, with a plain path; a redirect elsewhere is not followed."""
        problem = self._target_problem(url)
        if problem is None:
            return
        if came_from is None:                  # built from the config: refused before anything is sent
            raise Refusal(f"expected a request URL on {shown(self.base_url)}, got one which {problem}")
        try:
            where = shown(url)
        except ValueError:
            where = "an unparsable location"
        raise EndpointError(self.scrub(f"expected answers from {shown(came_from)}, got a redirect to {where}, "
                                       f"which {problem}: not followed"))

    def _target_problem(self, url: str) -> str | None:
        """Why ``url`` must not be sent the key (None: it may), as a phrase following "which"."""
        try:
            parts = urlsplit(url)
            elsewhere = origin(url) != self.origin
        except ValueError:                     # e.g. a port out of range, a broken IPv6 address
            return "does not parse as a URL"
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            return "carries user:password, where a key is never sent"
        if elsewhere:
            return "is on another origin, where a key is never sent"
        return path_problem((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))

    def _failure(self, response: requests.Response) -> Failure:
        return Failure(f"HTTP {response.status_code}: {self._excerpt(response)}", response.status_code,
                       response.content, says_later(response.status_code, response.headers))

    def _gave_up(self, url: str, failures: list[Failure]) -> EndpointError:
        """What a call whose every attempt failed raises. The same error answer to each of two
        or more attempts, before the endpoint ever answered a query, is the request refused (a
        wrong input shape, say): resending it cannot help. Once the endpoint has answered queries
        built the same way, or when the answers differ or say "later", or when there was one
        attempt only (no retries), the endpoint is taken to be down (exit code 3)."""
        first, attempts = failures[0], len(failures)
        same = all(failure == first for failure in failures)
        refused = first.status is not None and not first.later and attempts > 1
        if same and refused and not self._answered:
            return ContractError(f"expected HTTP 200 from {url}, got the same error answer to all {attempts} "
                                 f"attempts, so the request itself is refused: {first.text}")
        if same:
            return EndpointUnavailable(f"expected an answer from {url}, got the same failure on all {attempts} "
                                       f"attempts: {first.text}")
        return EndpointUnavailable(f"expected an answer from {url}, got a failure on all {attempts} attempts "
                                   f"({_first_last(first.text, failures[-1].text)})")

    def _describe(self, error: Exception) -> str:
        kind = "timeout" if isinstance(error, requests.Timeout) else "connection error"
        return self.scrub(f"{kind} ({type(error).__name__})")

    def _excerpt(self, response: requests.Response) -> str:
        text = " ".join(self.scrub(response.text)[:200].split())   # one line: no \n or \r from a server
        return text or "(empty body)"
