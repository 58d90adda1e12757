"""Remote prediction endpoints (KServe V2, TF-Serving, MLflow, any JSON API) as backends."""
from .backend import HttpBackend
from .transport import ContractError, EndpointError, EndpointUnavailable, ResponseError

__all__ = ["HttpBackend", "ContractError", "EndpointError", "EndpointUnavailable", "ResponseError"]
