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
The modules, top-down:

- ``server``: ModelServer, its settings checked and its lifecycle (start, serve, stop);
- ``handler``: one HTTP connection — the routes, and the infer path in the order that makes
  the bill equal the client's attempts (check, bill, fault, answer);
- ``meter``: what is counted under one lock — the bill, the fault draws, the API key check,
  the answers kept for idempotent resends;
- ``wire``: the three protocols' requests parsed into a batch and answers encoded;
- ``v2``: the V2 datatype table, shared with the http plugin's client.
"""
from .meter import FAULTS
from .server import HOST, ModelServer

__all__ = ["FAULTS", "HOST", "ModelServer"]
