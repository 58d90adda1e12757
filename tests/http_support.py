"""A real HTTP(S) server for tests: it answers from a script and records every request it got.

    with ScriptedServer([Reply(503, {"retry-after-ms": "1"}), Reply(body=v2_answer(scores))]) as server:
        ...                                   # server.url is http://127.0.0.1:PORT
    assert len(server.posts) == 2

The script is consumed in order, one entry per request, and its last entry repeats. An entry is
a ``Reply``, a ``(status, headers, body)`` tuple, or a callable taking the ``Received`` request and
returning either. GET requests (health checks) get ``get`` without consuming the script, unless
``get=None``. The server binds 127.0.0.1 only; with ``tls=LocalCA(...)`` it speaks https with a
certificate from a throw-away CA that a client trusts only when given ``ca.ca_file``.
``connections`` counts the TCP connections it accepted, requests or not.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """One answer: status, headers, body (bytes, str, or a JSON value), after ``delay`` seconds."""

    status: int = 200
    headers: dict = field(default_factory=dict)
    body: Any = b""
    delay: float = 0.0

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Received:
    """One request as the server saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float                                  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)


Step = Union[Reply, tuple, Callable[[Received], Union[Reply, tuple]]]


def _as_reply(value: Reply | tuple) -> Reply:
    if isinstance(value, Reply):
        return value
    status, headers, body = value
    return Reply(status, dict(headers), body)


class LocalCA:
    """A throw-away certificate authority (trustme) and one server certificate it signed."""

    def __init__(self, tmp_dir: Path, hosts: Sequence[str] = (LOOPBACK, "localhost")):
        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(*hosts)
        self.ca_file = str(Path(tmp_dir) / "local-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"              # keep-alive, like a real endpoint
    timeout = 5                                # an idle kept-alive connection does not pin a thread

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.server.owner._count_tls_failure()
                raise
        super().setup()

    def log_message(self, *args) -> None:      # quiet
        pass

    def _serve(self) -> None:
        owner: ScriptedServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                           body, time.monotonic())
        owner._arrive(request)
        try:
            reply = owner._reply_for(request)
            if reply.delay:
                time.sleep(reply.delay)
            payload = reply.payload()
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            owner._leave()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: "ScriptedServer", port: int, context: ssl.SSLContext | None):
        self.owner, self.context = owner, context
        super().__init__((LOOPBACK, port), _Handler)

    def get_request(self):
        sock, address = super().get_request()
        self.owner._count_connection()
        if self.context is not None:           # handshake in the handler's thread, not the accept loop
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:   # broken pipes, failed handshakes
        self.owner.errors += 1


class ScriptedServer:
    def __init__(self, script: Sequence[Step] = (Reply(),), *, get: Step | None = Reply(body={}),
                 tls: LocalCA | None = None, port: int = 0):
        if not script:
            raise ValueError("expected at least one scripted reply, got none")
        self.script, self.get, self.tls = list(script), get, tls
        self.requests: list[Received] = []
        self.in_flight = self.max_in_flight = 0
        self.tls_failures = self.errors = 0
        self.connections = 0                       # TCP connections accepted, whether or not a request came
        self._next = 0
        self._lock = threading.Lock()
        self._httpd = _Server(self, port, tls.server_context() if tls else None)
        self.port = self._httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}"
        self._thread: threading.Thread | None = None

    # ---- what it received --------------------------------------------------------------------
    @property
    def posts(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.method != "GET"]

    # ---- life --------------------------------------------------------------------------------
    def start(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True, name=f"scripted-server-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- called by the handler -----------------------------------------------------------------
    def _arrive(self, request: Received) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def _count_tls_failure(self) -> None:
        with self._lock:
            self.tls_failures += 1

    def _reply_for(self, request: Received) -> Reply:
        if request.method == "GET" and self.get is not None:
            step = self.get
        else:
            with self._lock:
                step = self.script[min(self._next, len(self.script) - 1)]
                self._next += 1
        return _as_reply(step(request) if callable(step) else step)


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


# ---- KServe V2 bodies ------------------------------------------------------------------------
def v2_answer(scores, name: str = "logits", datatype: str = "FP32", **extra) -> dict:
    """A V2 inference answer whose one output holds ``scores`` (B, C) (or labels, any shape)."""
    array = np.asarray(scores)
    return {"model_name": "m", "id": "1", **extra,
            "outputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                         "data": array.ravel().tolist()}]}


def v2_scores(batch: int, classes: int, *, seed: int = 0, **extra) -> dict:
    """A V2 answer of B × C finite logits."""
    return v2_answer(np.random.default_rng(seed).normal(size=(batch, classes)).round(4), **extra)


def v2_inputs(request: Received) -> np.ndarray:
    """The batch a V2 request carried, shaped as sent."""
    (tensor,) = request.json()["inputs"]
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def v2_one_hot(classes: int) -> Callable[[Received], Reply]:
    """A model for the script: example i answers the one-hot logits of class int(x[i, 0])."""
    def answer(request: Received) -> Reply:
        return Reply(body=v2_answer(np.eye(classes)[v2_inputs(request)[:, 0].astype(int)]))
    return answer
