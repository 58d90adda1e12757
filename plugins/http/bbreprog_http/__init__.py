"""Remote prediction endpoints (KServe V2, TF-Serving, MLflow, any JSON API) as backends."""
from .backend import HttpBackend
from .transport import EndpointError, EndpointUnavailable, ResponseError

__all__ = ["HttpBackend", "EndpointError", "EndpointUnavailable", "ResponseError"]
