"""One HTTP connection to a ModelServer: the routes, the plumbing (body, reply, log line) and
the handlers — the infer path in the order that makes the bill equal the client's attempts."""
from __future__ import annotations

import json
import math
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote, urlsplit

import numpy as np

from ..backends.base import InputError, Prediction
from .wire import Refused, instances, parse_json, predictions, v2_answer, v2_metadata, v2_request

if TYPE_CHECKING:
    from .server import ModelServer

MAX_BODY = 1 << 30                                   # bytes; a bigger body is refused unread

# routes: (method, pattern, handler name); groups name the model and version
_V2 = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_V1 = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
_ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in [
    ("GET", r"/v2/health/live", "_live"),
    ("GET", r"/v2/health/ready", "_ready"),
    ("GET", r"/v2", "_server_metadata"),
    ("GET", _V2, "_v2_metadata"),
    ("GET", _V2 + "/ready", "_v2_model_ready"),
    ("POST", _V2 + "/infer", "_v2_infer"),
    ("GET", _V1, "_v1_status"),
    ("POST", _V1 + ":predict", "_v1_predict"),
    ("GET", r"/ping", "_live"),
    ("GET", r"/health", "_live"),
    ("POST", r"/invocations", "_mlflow_invoke"),
    ("GET", r"/billing", "_billing"),
]]


class ModelHTTPServer(ThreadingHTTPServer):
    """The listening socket; one daemon thread per connection, each handled by ``Handler``."""

    daemon_threads = True
    model_server: ModelServer

    def handle_error(self, request, client_address):
        """A client that hung up is no error; anything else is a bug and prints its traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, so every answer carries its Content-Length and
    every request body is read before answering."""

    protocol_version = "HTTP/1.1"
    server_version = "bbreprog-serve"
    timeout = 60                                   # an idle keep-alive connection is dropped

    @property
    def model_server(self) -> ModelServer:
        return self.server.model_server

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def log_message(self, format, *args):          # the default logs the request line
        pass

    def send_error(self, code, message=None, explain=None):
        """Errors http.server raises itself (bad request line, unknown method) as JSON too."""
        self.close_connection = True
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    # -- plumbing --------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            if not self.model_server.meter.authorized(self.headers):
                raise Refused(401, "expected the API key, got a missing or wrong one")
            path = unquote(urlsplit(self.path).path).rstrip("/") or "/"
            handler, groups = self._route(method, path)
            if "name" in groups:
                self._check_model(groups["name"], groups["version"])
            getattr(self, handler)(body)
        except Refused as refusal:
            self._reply(refusal.status, {"error": str(refusal)})

    def _route(self, method: str, path: str) -> tuple[str, dict]:
        others = []
        for route_method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return handler, match.groupdict()
            if match:
                others.append(route_method)
        if others:
            raise Refused(405, f"expected {' or '.join(others)} for {path}, got {method}")
        raise Refused(404, f"expected a V2, TF-Serving or MLflow path, got {path[:200]!r}")

    def _check_model(self, name: str, version: str | None) -> None:
        served = self.model_server.name
        if name != served:
            raise Refused(404, f"expected model {served!r}, got {name[:200]!r}")
        if version not in (None, "1"):
            raise Refused(404, f"expected model version 1, got {version[:200]!r}")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise Refused(411, "expected a Content-Length header, got a chunked body")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            raise Refused(413, f"expected a Content-Length in [0, {MAX_BODY}], got "
                               f"{self.headers.get('Content-Length')[:40]!r}")
        return self.rfile.read(length)

    def _reply(self, status: int, payload, *, content_type: str = "application/json",
               headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True           # the client gave up (a timeout fault)
        log = self.model_server.log
        if log is not None:
            path = urlsplit(getattr(self, "path", "")).path
            path = "".join(c if c.isprintable() else "?" for c in path)[:200]
            log(f"{self.command or '-'} {path or '-'} {status}")

    # -- metadata and health ---------------------------------------------------------------

    def _live(self, body: bytes) -> None:
        self._reply(200, {})

    def _ready(self, body: bytes) -> None:
        self._reply(200, {"ready": True})

    def _server_metadata(self, body: bytes) -> None:
        self._reply(200, {"name": "blackbox-reprog", "version": "1", "extensions": []})

    def _v2_metadata(self, body: bytes) -> None:
        server = self.model_server
        self._reply(200, v2_metadata(server.name, server.backend, server.fp64))

    def _v2_model_ready(self, body: bytes) -> None:
        self._reply(200, {"name": self.model_server.name, "ready": True})

    def _v1_status(self, body: bytes) -> None:
        self._reply(200, {"model_version_status": [{
            "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

    def _billing(self, body: bytes) -> None:
        self._reply(200, self.model_server.billing())

    # -- inference -------------------------------------------------------------------------

    def _v2_infer(self, body: bytes) -> None:
        server = self.model_server
        x, request_id = v2_request(parse_json(body), server.backend.input_spec.dtype)
        self._infer(x, lambda p: v2_answer(server.name, request_id, p, server.fp64))

    def _v1_predict(self, body: bytes) -> None:
        dtype = self.model_server.backend.input_spec.dtype
        self._infer(instances(parse_json(body), ("instances", "inputs"), dtype), predictions)

    def _mlflow_invoke(self, body: bytes) -> None:
        dtype = self.model_server.backend.input_spec.dtype
        self._infer(instances(parse_json(body), ("inputs", "instances"), dtype), predictions)

    def _infer(self, x: np.ndarray, encode: Callable[[Prediction], dict]) -> None:
        """Check, bill, maybe fault, answer: the order that makes billed == client attempts."""
        server, meter = self.model_server, self.model_server.meter
        try:
            server.backend.input_spec.check(x)
        except InputError as error:
            raise Refused(400, str(error)) from None
        key = self.headers.get("Idempotency-Key") if server.idempotent else None
        stored = meter.replay(key, len(x))
        if stored is not None:                     # a retry or a resend: same answer, no charge
            self._reply(200, stored)
            return
        fault = meter.bill(len(x), key)
        server.wait(server.latency)
        if fault == "429":
            seconds = server.retry_after
            self._reply(429, {"error": "rate limited"}, headers={
                "Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))})
            return
        if fault == "500":
            self._reply(500, b"internal error", content_type="text/plain")
            return
        if fault == "timeout":
            server.wait(server.timeout_delay)      # the client has given up by now
        try:
            body = json.dumps(encode(server.backend.query(x))).encode()
        except Exception as error:                 # the model itself failed: still billed
            raise Refused(500, f"expected an answer from the model, got {type(error).__name__}: {error}") from None
        if fault == "malformed":
            self._reply(200, body[:len(body) // 2])
            return
        if fault is None:                          # counted before the client can read it
            meter.answered(len(x), key, body)
        self._reply(200, body)
