"""The ONNX backend plugin for blackbox-reprog."""
from .backend import OnnxBackend
from .safety import UnsafeModel, check_model_file

__all__ = ["OnnxBackend", "UnsafeModel", "check_model_file"]
