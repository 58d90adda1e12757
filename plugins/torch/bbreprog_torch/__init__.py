"""The PyTorch backend plugin for blackbox-reprog: the white-box reference path."""
from .backend import TorchBackend

__all__ = ["TorchBackend"]
