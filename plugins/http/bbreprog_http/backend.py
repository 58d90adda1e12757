"""A remote prediction endpoint as a Backend.

The batch a trainer asks for is split into requests of at most ``max_batch`` examples, sent
``concurrency`` at a time (``RemoteBackend`` does both); each request is retried by the
transport's policy and every attempt is told to the ledger before it leaves. Answers are
decoded and checked by the protocol's contract, so nothing unchecked reaches the toolkit::

    [backend]
    name = "http"
    model = "https://models.example.com"
    [backend.options]
    protocol = "v2"
    model_name = "resnet"
    input_shape = [3, 224, 224]
    num_classes = 1000
    output_kind = "probs"
    key_env = "VENDOR_API_KEY"
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Sequence

import numpy as np

from blackbox_reprog.backends.base import OUTPUT_KINDS, InputSpec, Prediction, RemoteBackend
from blackbox_reprog.errors import Refusal

from .keys import ApiKey
from .protocols import Contract, Protocol, make_protocol
from .transport import EndpointError, ResponseError, Transport, shown

PROTOCOL_OPTIONS = {
    "v2": ("model_name", "model_version", "input_name", "request_outputs", "scores_output", "labels_output"),
    "tfserving": ("model_name", "model_version", "scores_output", "labels_output"),
    "mlflow": ("scores_output", "labels_output"),
    "template": ("path", "request", "scores_path", "topk_path", "labels_path", "label_key", "score_key",
                 "health_path"),
}


class HttpBackend(RemoteBackend):
    """A remote prediction API (KServe V2, TF-Serving, MLflow or a declared JSON template)."""

    name = "http"                # remote, with a probe: one paid call at the start checks the whole contract

    def __init__(self, url: str, *, protocol: Protocol, input_shape: Sequence[int], num_classes: int,
                 output_kind: str = "probs", k: int = 1, labels: list[str] | None = None,
                 dtype: str = "float32", value_range: Sequence[float] = (-math.inf, math.inf),
                 max_batch: int = 64, concurrency: int = 4, idempotency_header: str = "Idempotency-Key",
                 idempotent: bool = False, transport: Transport):
        if output_kind not in OUTPUT_KINDS:
            raise Refusal(f"expected backend.options.output_kind among {', '.join(OUTPUT_KINDS)}, got {output_kind!r}")
        if output_kind == "topk" and not 1 <= int(k) <= int(num_classes):
            raise Refusal(f"expected backend.options.k in [1, {num_classes}] for top-k answers, got {k}")
        if labels is not None and len(labels) != int(num_classes):
            raise Refusal(f"expected {num_classes} class names in backend.options.labels, got {len(labels)}")
        if int(max_batch) < 1 or int(concurrency) < 1:
            raise Refusal(f"expected max_batch and concurrency of at least 1, got {max_batch} and {concurrency}")
        self.protocol, self.transport = protocol, transport
        self.input_spec = InputSpec(tuple(int(s) for s in input_shape), dtype,
                                    tuple(float(v) for v in value_range))
        self.num_classes, self.output_kind = int(num_classes), output_kind
        self.contract = Contract(output_kind, num_classes, k if output_kind == "topk" else 1, labels)
        self.max_batch = int(max_batch)
        self.idempotency_header = idempotency_header
        # declared by the user (nothing in a protocol says so): a call resent under its key is not billed
        # twice, so a resumed run does not book the calls its dead predecessor left in flight
        if not isinstance(idempotent, bool):
            raise Refusal(f"expected backend.options.idempotent true or false, got {idempotent!r}")
        self.capabilities = dataclasses.replace(self.capabilities, concurrency=int(concurrency),
                                                honours_idempotency=idempotent and bool(idempotency_header))
        # what identifies the answers (journal keys, answer store): the endpoint and what is asked of it
        self.model_id = (f"http:{protocol.name}:{shown(transport.url(protocol.infer_path))}:{output_kind}"
                         + (f":k{k}" if output_kind == "topk" else "") + protocol.variant())
        try:
            self._check_ready()
        except ValueError:
            transport.close()
            raise

    @classmethod
    def from_config(cls, model: str, *, protocol: str = "v2", input_shape: Sequence[int] = (),
                    num_classes: int = 0, key_env: str = "", key_file: str = "",
                    key_header: str = "Authorization", key_prefix: str | None = None,
                    connect_timeout: float = 5.0, read_timeout: float = 60.0, retries: int = 5,
                    retry_after_cap: float = 60.0, rate_limit: float = 0.0, breaker_failures: int = 10,
                    ca_bundle: str = "", **options) -> "HttpBackend":
        """``model`` is the endpoint's base URL; ``options`` are ``backend.options``."""
        missing = [name for name, value in (("input_shape", input_shape), ("num_classes", num_classes)) if not value]
        if missing:
            raise Refusal("expected backend.options input_shape and num_classes for an http backend (an "
                          "endpoint's metadata is optional, so they are not guessed), got no "
                          f"{' and no '.join(missing)}")
        wanted = PROTOCOL_OPTIONS.get(protocol, ())
        protocol_options = {key: options.pop(key) for key in list(options) if key in wanted}
        key = ApiKey.load(env=key_env, file=key_file, header=key_header, prefix=key_prefix)
        transport = Transport(model, key=key, connect_timeout=connect_timeout, read_timeout=read_timeout,
                              retries=retries, retry_after_cap=retry_after_cap, rate_limit=rate_limit,
                              breaker_failures=breaker_failures, ca_bundle=ca_bundle)
        return cls(model, protocol=make_protocol(protocol, **protocol_options), input_shape=input_shape,
                   num_classes=num_classes, transport=transport, **options)

    # ---- before any query ------------------------------------------------------------------
    def _check_ready(self) -> None:
        """The endpoint answers its protocol's health check (free: no example is sent)."""
        path = self.protocol.ready_path
        if path is None:
            return
        url = shown(self.transport.url(path))
        try:
            response = self.transport.get(path)
        except EndpointError as error:
            raise Refusal(str(error)) from None
        except Exception as error:                 # connection refused, DNS, TLS: one sentence
            raise Refusal(f"expected a {self.protocol.name} endpoint answering GET {url}, got "
                          f"{type(error).__name__}") from None
        if response.status_code != 200:
            raise Refusal(f"expected a {self.protocol.name} endpoint answering GET {url} with 200, "
                          f"got HTTP {response.status_code}")

    # ---- one request (RemoteBackend.query chunks, sends concurrently and waits for them all) ----
    def _request(self, chunk: np.ndarray, on_send: Callable[..., None] | None, key: str | None) -> Prediction:
        """One request, retried by the transport's policy; ``key`` is sent as the idempotency
        header, retries and resends after a restart included."""
        body = json.dumps(self.protocol.encode(chunk)).encode()
        headers = {self.idempotency_header: key} if key and self.idempotency_header else {}

        def attempt(is_retry: bool) -> None:
            if on_send:
                on_send(len(chunk), retry=is_retry)

        response = self.transport.post(self.protocol.infer_path, body, attempt, headers)
        try:
            answer = self.protocol.decode(_json(self.transport.scrub_bytes(response.content)), len(chunk),
                                          self.contract)
            return self.check_answer(answer, len(chunk))
        except ResponseError as error:
            raise ResponseError(self.transport.scrub(f"{shown(response.url)}: {error}")) from None

    def close(self) -> None:
        super().close()
        self.transport.close()

    def describe(self) -> dict:
        return {**super().describe(), **self.protocol.describe(), "url": shown(self.transport.base_url),
                "max_batch": self.max_batch, "concurrency": self.capabilities.concurrency,
                "honours_idempotency": self.capabilities.honours_idempotency}


def _json(content: bytes) -> object:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ResponseError(f"expected a JSON body, got {len(content)} bytes that do not parse "
                            f"({type(error).__name__} at position {getattr(error, 'pos', '?')})") from None
