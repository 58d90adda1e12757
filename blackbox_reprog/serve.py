"""A local model server: any Backend over HTTP, metered, with faults injected on purpose.

It answers three wire protocols that remote prediction APIs really speak — the Open Inference
Protocol (KServe V2, Triton, MLServer), TensorFlow-Serving REST and MLflow scoring — so the
remote path can be tried end to end without an account, and so tests have a real server whose
bill can be compared with the client's ledger::

    with ModelServer(create_backend("onnx", "crepe-tiny"), name="crepe-tiny", api_key="k") as server:
        ...  # POST {server.url}/v2/models/crepe-tiny/infer with "Authorization: Bearer k"

Billing is conservative: a request is billed as soon as it parses into a valid batch, before a
fault is decided, because a real API may charge for an answer the client never received. So
``billed`` equals what a client that books every attempt has booked. It binds 127.0.0.1 only:
a test server with a key in memory has no business on another interface.

Only the standard library and numpy: the backend itself is the only heavy thing loaded.
"""
from __future__ import annotations

import hmac
import json
import math
import random
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

import numpy as np

from . import v2
from .backend import Backend, InputError, Prediction
from .degrade import degrade
from .errors import Refusal

HOST = "127.0.0.1"
FAULTS = ("429", "500", "timeout", "malformed")
MAX_BODY = 1 << 30                                   # bytes; a bigger body is refused unread
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110)

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


class _Refused(Exception):
    """A request answered with an error status; the message is one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _number(value, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite float in [low, high], or a one-sentence ValueError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise Refusal(f"expected {what} {bounds}, got {value!r}")
    return float(value)


def _floats(data, dtype: str) -> np.ndarray:
    """JSON numbers (flat or nested lists) → an array of the backend's dtype. Going through
    float64 keeps a float32 sent as its shortest repr bit-identical."""
    try:
        return np.asarray(data, dtype=np.float64).astype(dtype)
    except (TypeError, ValueError):
        raise _Refused(400, "expected a rectangular nested list of numbers, got ragged or "
                            "non-numeric data") from None


def _flat(values: np.ndarray) -> list:
    """Row-major Python numbers; float(v) of a float32 is exact, and json writes its repr."""
    return np.asarray(values).ravel().tolist()


def _predictions(p: Prediction) -> list:
    """TF-Serving and MLflow ``predictions``: score rows, {labels, scores} dicts, or labels."""
    if p.kind in ("logits", "probs"):
        return p.scores.astype(np.float64).tolist()
    if p.kind == "topk":
        return [{"labels": labels, "scores": scores} for labels, scores
                in zip(p.labels.tolist(), p.scores.astype(np.float64).tolist())]
    return p.labels[:, 0].tolist()


class ModelServer:
    """Serves ``backend`` (degraded to ``output`` when given) on 127.0.0.1:``port`` (0: any free
    port; the socket is bound here, so ``url`` is known before ``start``).

    With ``api_key``, every request must carry it (``Authorization: Bearer <key>`` when
    ``key_header`` is "Authorization", the bare key in any other header). With probability
    ``fault_rate`` an infer request meets one of ``faults``, chosen uniformly by a
    ``random.Random(seed)``: "429" (rate limited, Retry-After headers from ``retry_after``),
    "500" (text/plain), "timeout" (answers after ``timeout_delay`` seconds) or "malformed"
    (a 200 whose JSON is cut in half). ``latency`` delays every infer answer. ``fp64`` labels
    scores FP64 in V2 answers, as some servers do for float32 models. ``log`` receives one
    line per request (method, path, status; never a header).

    With ``idempotent``, a request carrying an ``Idempotency-Key`` header is billed once per
    key: a retry or a resend after the client crashed gets the stored answer (counted as
    ``replayed``) or, if none was answered yet, is served without a second charge.
    """

    def __init__(self, backend: Backend, *, name: str, port: int = 0, api_key: str | None = None,
                 key_header: str = "Authorization", output: str = "", k: int = 5,
                 latency: float = 0.0, fault_rate: float = 0.0,
                 faults: Iterable[str] = ("429", "500", "timeout"), timeout_delay: float = 2.0,
                 retry_after: float = 0.0, seed: int = 0, fp64: bool = False,
                 log: Callable[[str], None] | None = None, idempotent: bool = False):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise Refusal(f"expected a model name of letters, digits, '.', '_' or '-', got {name!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise Refusal(f"expected a port in [0, 65535], got {port!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.isprintable()
                                    or not api_key or any(c.isspace() for c in api_key)):
            # never echo the key, not even in a refusal
            raise Refusal("expected an API key of printable characters without spaces, got another value")
        if not isinstance(key_header, str) or not _HEADER.fullmatch(key_header):
            raise Refusal(f"expected a header name like 'X-API-Key', got {key_header!r}")
        self.latency = _number(latency, "latency (seconds)")
        self.fault_rate = _number(fault_rate, "fault_rate", 0.0, 1.0)
        self.timeout_delay = _number(timeout_delay, "timeout_delay (seconds)")
        self.retry_after = _number(retry_after, "retry_after (seconds)")
        self.faults = tuple(str(f) for f in faults)
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown or not self.faults:
            raise Refusal(f"expected faults among {', '.join(FAULTS)}, got "
                          f"{', '.join(map(repr, unknown)) if unknown else 'none'}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise Refusal(f"expected an integer seed, got {seed!r}")
        self.backend = degrade(backend, output, k)
        self.name, self.api_key, self.key_header, self.fp64 = name, api_key, key_header, bool(fp64)
        self.log = log
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts = {"billed": 0, "answered": 0, "requests": 0, "replayed": 0,
                        "faults": {f: 0 for f in FAULTS}, "unauthorized": 0}
        self.idempotent = bool(idempotent)
        self._billed_keys: set[str] = set()
        self._answers: dict[str, bytes] = {}       # idempotency key -> the answer's body
        self._stopping = threading.Event()         # wakes sleeping handlers when stopping
        self._thread: threading.Thread | None = None
        self._started = self._closed = False
        self._httpd = _HTTPServer((HOST, port), _Handler)
        self._httpd.model_server = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "ModelServer":
        """Serve in a daemon thread; returns self."""
        if self._started:
            raise RuntimeError(f"expected a server that has not started, got one serving {self.url}")
        self._started = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"bbreprog-serve-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` is called from another thread or an
        exception (KeyboardInterrupt: the CLI turns SIGTERM into one) ends it; then close."""
        if self._started:
            raise RuntimeError(f"expected a server that has not started, got one serving {self.url}")
        self._started = True
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests and close the socket; requests in flight finish on their own
        daemon threads (a sleeping timeout fault is woken). The backend stays open."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._started:
            self._httpd.shutdown()                 # returns at once if the loop already ended
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- metering --------------------------------------------------------------------------

    def billing(self) -> dict:
        """{"billed", "answered", "requests", "faults": {kind: n}, "unauthorized"}: examples
        billed (every valid batch, faulted or not), examples answered without a fault,
        requests billed, faults injected, requests refused for a missing or wrong key."""
        with self._lock:
            return {**self._counts, "faults": dict(self._counts["faults"])}

    def _bill(self, examples: int, key: str | None = None) -> str | None:
        """Bill a valid batch (once per idempotency key), then draw its fault (None: answer
        normally). One lock for both, so the n-th request always meets the n-th draw."""
        with self._lock:
            if key is None or key not in self._billed_keys:
                self._counts["billed"] += examples
                if key is not None:
                    self._billed_keys.add(key)
            self._counts["requests"] += 1
            fault = None
            if self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.faults)
                self._counts["faults"][fault] += 1
            return fault

    def _answered(self, examples: int, key: str | None = None, body: bytes = b"") -> None:
        with self._lock:
            self._counts["answered"] += examples
            if key is not None:
                self._answers[key] = body

    def _replay(self, key: str | None, examples: int) -> bytes | None:
        """The stored answer to an idempotency key already answered, counted as replayed."""
        with self._lock:
            body = self._answers.get(key) if key is not None else None
            if body is not None:
                self._counts["replayed"] += examples
            return body

    def _authorized(self, headers) -> bool:
        if self.api_key is None:
            return True
        given = headers.get(self.key_header, "")
        if self.key_header.lower() == "authorization":
            scheme, _, given = given.partition(" ")
            if scheme.lower() != "bearer":
                given = ""
        if hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return True
        with self._lock:
            self._counts["unauthorized"] += 1
        return False

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- protocol encodings ----------------------------------------------------------------

    def _v2_outputs(self, p: Prediction) -> list[dict]:
        float_type = "FP64" if self.fp64 else "FP32"
        b = len(p)
        labels = {"name": "labels", "datatype": "INT64"}
        if p.kind in ("logits", "probs"):
            return [{"name": "scores", "shape": [b, p.num_classes], "datatype": float_type,
                     "data": _flat(p.scores.astype(np.float64))}]
        if p.kind == "topk":
            k = p.labels.shape[1]
            return [{**labels, "shape": [b, k], "data": _flat(p.labels)},
                    {"name": "scores", "shape": [b, k], "datatype": float_type,
                     "data": _flat(p.scores.astype(np.float64))}]
        return [{**labels, "shape": [b, 1], "data": _flat(p.labels)}]

    def _v2_output_metadata(self) -> list[dict]:
        kind, classes = self.backend.output_kind, self.backend.num_classes
        float_type = "FP64" if self.fp64 else "FP32"
        if kind in ("logits", "probs"):
            return [{"name": "scores", "datatype": float_type, "shape": [-1, classes]}]
        labels = {"name": "labels", "datatype": "INT64"}
        if kind == "topk":
            k = getattr(self.backend, "k", -1)
            return [{**labels, "shape": [-1, k]}, {"name": "scores", "datatype": float_type, "shape": [-1, k]}]
        return [{**labels, "shape": [-1, 1]}]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    model_server: ModelServer

    def handle_error(self, request, client_address):
        """A client that hung up is no error; anything else is a bug and prints its traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
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
            if not self.model_server._authorized(self.headers):
                raise _Refused(401, "missing or wrong API key")
            path = unquote(urlsplit(self.path).path).rstrip("/") or "/"
            handler, groups = self._route(method, path)
            if "name" in groups:
                self._check_model(groups["name"], groups["version"])
            getattr(self, handler)(body)
        except _Refused as refusal:
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
            raise _Refused(405, f"expected {' or '.join(others)} for {path}, got {method}")
        raise _Refused(404, f"expected a V2, TF-Serving or MLflow path, got {path[:200]!r}")

    def _check_model(self, name: str, version: str | None) -> None:
        served = self.model_server.name
        if name != served:
            raise _Refused(404, f"expected model {served!r}, got {name[:200]!r}")
        if version not in (None, "1"):
            raise _Refused(404, f"expected model version 1, got {version[:200]!r}")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _Refused(411, "expected a Content-Length header, got a chunked body")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            raise _Refused(413, f"expected a Content-Length in [0, {MAX_BODY}], got "
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

    @staticmethod
    def _json(body: bytes):
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Refused(400, "expected a JSON body, got something that does not parse") from None

    # -- metadata and health ---------------------------------------------------------------

    def _live(self, body: bytes) -> None:
        self._reply(200, {})

    def _ready(self, body: bytes) -> None:
        self._reply(200, {"ready": True})

    def _server_metadata(self, body: bytes) -> None:
        self._reply(200, {"name": "blackbox-reprog", "version": "1", "extensions": []})

    def _v2_metadata(self, body: bytes) -> None:
        server, backend = self.model_server, self.model_server.backend
        spec = backend.input_spec
        datatype = v2.DATATYPES.get(spec.dtype, spec.dtype.upper())
        low, high = (v if math.isfinite(v) else None for v in spec.value_range)
        self._reply(200, {
            "name": server.name, "versions": ["1"], "platform": "blackbox-reprog",
            "inputs": [{"name": "input", "datatype": datatype, "shape": [-1, *spec.shape]}],
            "outputs": server._v2_output_metadata(),
            "parameters": {"output_kind": backend.output_kind, "num_classes": backend.num_classes,
                           "value_range": [low, high]}})

    def _v2_model_ready(self, body: bytes) -> None:
        self._reply(200, {"name": self.model_server.name, "ready": True})

    def _v1_status(self, body: bytes) -> None:
        self._reply(200, {"model_version_status": [{
            "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

    def _billing(self, body: bytes) -> None:
        self._reply(200, self.model_server.billing())

    # -- inference -------------------------------------------------------------------------

    def _v2_infer(self, body: bytes) -> None:
        request = self._json(body)
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) \
                or len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
            raise _Refused(400, "expected a JSON object whose 'inputs' holds one tensor object, got "
                                "something else")
        tensor = request["inputs"][0]
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype not in ("FP32", "FP64"):
            raise _Refused(400, f"expected datatype FP32 or FP64, got {str(datatype)[:40]!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _Refused(400, f"expected 'shape' as a list of non-negative integers, got {str(shape)[:80]}")
        x = _floats(tensor.get("data"), self.model_server.backend.input_spec.dtype)
        if x.size != math.prod(shape):
            raise _Refused(400, f"expected {math.prod(shape)} values for shape {shape}, got {x.size}")
        request_id = request.get("id") if isinstance(request.get("id"), str) else None

        def encode(p: Prediction) -> dict:
            return {"model_name": self.model_server.name, "model_version": None, "id": request_id,
                    "parameters": None, "outputs": self.model_server._v2_outputs(p)}
        self._infer(x.reshape(shape), encode)

    def _v1_predict(self, body: bytes) -> None:
        self._infer(self._instances(body, ("instances", "inputs")), lambda p: {"predictions": _predictions(p)})

    def _mlflow_invoke(self, body: bytes) -> None:
        self._infer(self._instances(body, ("inputs", "instances")), lambda p: {"predictions": _predictions(p)})

    def _instances(self, body: bytes, keys: tuple[str, ...]) -> np.ndarray:
        request = self._json(body)
        key = next((k for k in keys if isinstance(request, dict) and k in request), None)
        if key is None:
            raise _Refused(400, f"expected a JSON object with {keys[0]!r} (or {keys[1]!r}), got "
                                f"{sorted(request)[:5] if isinstance(request, dict) else type(request).__name__}")
        value = request[key]
        if isinstance(value, dict) and len(value) == 1:       # a named (columnar) input
            value = next(iter(value.values()))
        return _floats(value, self.model_server.backend.input_spec.dtype)

    def _infer(self, x: np.ndarray, encode: Callable[[Prediction], dict]) -> None:
        """Check, bill, maybe fault, answer: the order that makes billed == client attempts."""
        server = self.model_server
        try:
            server.backend.input_spec.check(x)
        except InputError as error:
            raise _Refused(400, str(error)) from None
        key = self.headers.get("Idempotency-Key") if server.idempotent else None
        stored = server._replay(key, len(x))
        if stored is not None:                     # a retry or a resend: same answer, no charge
            self._reply(200, stored)
            return
        fault = server._bill(len(x), key)
        server._wait(server.latency)
        if fault == "429":
            seconds = server.retry_after
            self._reply(429, {"error": "rate limited"}, headers={
                "Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))})
            return
        if fault == "500":
            self._reply(500, b"internal error", content_type="text/plain")
            return
        if fault == "timeout":
            server._wait(server.timeout_delay)     # the client has given up by now
        try:
            body = json.dumps(encode(server.backend.query(x))).encode()
        except Exception as error:                 # the model itself failed: still billed
            raise _Refused(500, f"the model failed: {type(error).__name__}: {error}") from None
        if fault == "malformed":
            self._reply(200, body[:len(body) // 2])
            return
        if fault is None:                          # counted before the client can read it
            server._answered(len(x), key, body)
        self._reply(200, body)
