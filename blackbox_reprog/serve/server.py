"""ModelServer: the settings of a metered server, checked when it is made, and its lifecycle
(serve in a thread or in the caller's, stop). What it does per request is in ``handler``."""
from __future__ import annotations

import math
import re
import threading
from typing import Callable, Iterable

from ..backends.base import Backend
from ..backends.degrade import degrade
from ..errors import Refusal
from .handler import Handler, ModelHTTPServer
from .meter import FAULTS, Meter

HOST = "127.0.0.1"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110)


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
        self.idempotent = bool(idempotent)
        self.meter = Meter(fault_rate=self.fault_rate, faults=self.faults, seed=seed, api_key=api_key,
                           key_header=key_header)
        self._stopping = threading.Event()         # wakes sleeping handlers when stopping
        self._thread: threading.Thread | None = None
        self._started = self._closed = False
        self._httpd = ModelHTTPServer((HOST, port), Handler)
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

    # -- for the handlers ------------------------------------------------------------------

    def billing(self) -> dict:
        """{"billed", "answered", "requests", "replayed", "faults": {kind: n}, "unauthorized"}:
        see ``Meter.billing``."""
        return self.meter.billing()

    def wait(self, seconds: float) -> None:
        """Sleep, but wake when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)


def _number(value, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite float in [low, high], or a one-sentence Refusal."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise Refusal(f"expected {what} {bounds}, got {value!r}")
    return float(value)
