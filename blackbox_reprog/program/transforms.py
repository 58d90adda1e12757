"""Input transforms ("programs"): a flat parameter vector θ plus a target batch → model inputs.

Written once in torch: the black-box path calls them under ``no_grad``, the white-box path
with autograd. Every transform evaluates a whole population of θ's at once (one row per
perturbation of a zeroth-order step) and always clips to the model's value range.

A ``grid`` shrinks θ: the program is stored on a coarse grid and upsampled (linear for
signals, bilinear for images), which is what makes zeroth-order search tractable —
estimator variance grows with the dimension d.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from ..components import AtLeast, Above, Family
from ..errors import Refusal


class Transform:
    """Base class. Subclasses set ``num_params`` and implement ``_program``."""

    kind: str = ""
    num_params: int

    def __init__(self, target_shape: tuple[int, ...], source_shape: tuple[int, ...],
                 value_range: tuple[float, float]):
        self.target_shape = tuple(target_shape)
        self.source_shape = tuple(source_shape)
        self.low, self.high = (float(v) for v in value_range)

    def __call__(self, thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """thetas (P, d), x (B, *target_shape) → (P, B, *source_shape), clipped to the range."""
        if thetas.ndim != 2 or thetas.shape[1] != self.num_params:
            raise ValueError(f"expected thetas of shape (P, {self.num_params}), got {tuple(thetas.shape)}")
        if tuple(x.shape[1:]) != self.target_shape:
            raise ValueError(f"expected targets of shape (B, {self.target_shape}), got {tuple(x.shape)}")
        out = self._program(thetas, x)                               # (P, B, *source_shape)
        return out.clamp(self.low, self.high)

    def _program(self, thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "num_params": self.num_params}


def _upsample_1d(control: torch.Tensor, length: int) -> torch.Tensor:
    """(P, n) control points → (P, length) by linear interpolation."""
    if control.shape[1] == length:
        return control
    return F.interpolate(control[:, None, :], size=length, mode="linear", align_corners=True)[:, 0]


def _upsample_2d(control: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(P, C, g, g) → (P, C, H, W) by bilinear interpolation."""
    if tuple(control.shape[2:]) == size:
        return control
    return F.interpolate(control, size=size, mode="bilinear", align_corners=False)


def with_subspace(transform: Transform, *, seed: int = 0, subspace: Annotated[int, AtLeast(0)] = 0) -> Transform:
    """Every kind's shared parameter: search a random ``subspace``-dimensional subspace of θ
    (0: the whole θ)."""
    if not subspace:
        return transform
    if subspace >= transform.num_params:
        raise Refusal(f"expected a subspace smaller than the program's {transform.num_params} "
                      f"parameters, got {subspace}")
    return Subspace(transform, subspace, seed)


#: transform kind → class; built from (target_shape, source_shape, value_range)
TRANSFORMS = Family("transform", context=("seed",), wrap=with_subspace)


@TRANSFORMS.register
class SignalProgram(Transform):
    """Voice2Series: the z-normalised target series sits in the middle of the source frame;
    a trainable signal fills the rest. x' = pad(z(x)) + M ⊙ δ(θ), M = 0 where the target is.

    ``grid`` = number of control points of δ (0: one parameter per sample).
    ``scale`` multiplies the program so θ = 0 starts from silence around the series.
    """

    kind = "signal"

    def __init__(self, target_shape, source_shape, value_range, *, grid: Annotated[int, AtLeast(0)] = 0,
                 scale: float = 1.0):
        super().__init__(target_shape, source_shape, value_range)
        if len(self.target_shape) != 1 or len(self.source_shape) != 1:
            raise Refusal(f"the signal program expects 1-D series and a 1-D model input, got "
                          f"target {self.target_shape} and model input {self.source_shape}")
        (self.length,), (target_length,) = self.source_shape, self.target_shape
        if target_length > self.length:
            raise Refusal(f"expected series of at most {self.length} samples, got {target_length} (resample them "
                          f"with --set data.length={self.length})")
        self.start = (self.length - target_length) // 2
        self.stop = self.start + target_length
        mask = torch.ones(self.length)
        mask[self.start:self.stop] = 0
        self.mask = mask                                             # (L,)
        self.num_params = int(grid) if grid else self.length
        self.scale = float(scale)

    def _program(self, thetas, x):
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True).clamp_min(1e-8)
        z = (x - mean) / std                                         # (B, T)
        padded = F.pad(z, (self.start, self.length - self.stop))     # (B, L)
        delta = self.scale * _upsample_1d(thetas, self.length) * self.mask  # (P, L)
        return padded[None] + delta[:, None]                         # (P, B, L)


def _fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey targets on colour models: repeat the single channel."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise Refusal(f"expected targets with 1 or {channels} channels, got {x.shape[1]}")


class _ImageProgram(Transform):
    """Shared by the image programs: a (C, g, g) grid of parameters (or full resolution when
    ``grid`` is 0), upsampled bilinearly to the model's canvas."""

    def __init__(self, target_shape, source_shape, value_range, *, grid: Annotated[int, AtLeast(0)] = 0):
        super().__init__(target_shape, source_shape, value_range)
        if len(self.target_shape) != 3 or len(self.source_shape) != 3:
            raise Refusal(f"the {self.kind} program expects images (C, H, W), got target "
                          f"{self.target_shape} and model input {self.source_shape}")
        self.channels, self.height, self.width = self.source_shape
        if self.target_shape[0] not in (1, self.channels):     # refused now, not at the first query
            raise Refusal(f"expected targets with 1 or {self.channels} channels, got {self.target_shape[0]}")
        self.grid = int(grid)
        side = (self.grid, self.grid) if self.grid else (self.height, self.width)
        self.param_shape = (self.channels, *side)
        self.num_params = math.prod(self.param_shape)

    def _weights(self, thetas: torch.Tensor) -> torch.Tensor:
        """(P, d) → (P, C, H, W) on the canvas."""
        return _upsample_2d(thetas.view(-1, *self.param_shape), (self.height, self.width))


@TRANSFORMS.register
class FrameProgram(_ImageProgram):
    """The image frame program (Elsayed et al.; BAR): the target is resized to ``inner`` pixels
    and placed in the centre of the canvas; the frame around it is trainable and bounded:
    frame = mid + half·tanh(W), so θ = 0 is a mid-grey frame. ``grid`` = side of the coarse
    grid W lives on (0: full resolution)."""

    kind = "frame"

    def __init__(self, target_shape, source_shape, value_range, *, inner: Annotated[int, AtLeast(0)] = 0, **rest):
        super().__init__(target_shape, source_shape, value_range, **rest)
        self.inner = int(inner) or min(self.height, self.width) // 2
        if not 0 < self.inner <= min(self.height, self.width):
            raise Refusal(f"expected an inner size within the {self.height}x{self.width} canvas, got {self.inner}")
        self.top = (self.height - self.inner) // 2
        self.left = (self.width - self.inner) // 2
        mask = torch.ones(1, self.height, self.width)
        mask[:, self.top:self.top + self.inner, self.left:self.left + self.inner] = 0
        self.mask = mask                                             # (1, H, W)
        finite = math.isfinite(self.low) and math.isfinite(self.high)
        self.mid = (self.low + self.high) / 2 if finite else 0.0
        self.half = (self.high - self.low) / 2 if finite else 1.0

    def _program(self, thetas, x):
        x = _fit_channels(x, self.channels)
        small = F.interpolate(x, size=(self.inner, self.inner), mode="bilinear", align_corners=False)
        canvas = F.pad(small, (self.left, self.width - self.left - self.inner,
                               self.top, self.height - self.top - self.inner))  # (B, C, H, W)
        frame = (self.mid + self.half * torch.tanh(self._weights(thetas))) * self.mask  # (P, C, H, W)
        return canvas[None] + frame[:, None]                         # (P, B, C, H, W)


@TRANSFORMS.register
class AdditiveProgram(_ImageProgram):
    """Full-image additive program: the target is resized to the whole canvas and a bounded
    perturbation is added everywhere: x' = clip(resize(x) + ε·tanh(W))."""

    kind = "additive"

    def __init__(self, target_shape, source_shape, value_range, *, epsilon: Annotated[float, Above(0)] = 0.5, **rest):
        super().__init__(target_shape, source_shape, value_range, **rest)
        self.epsilon = float(epsilon)

    def _program(self, thetas, x):
        x = _fit_channels(x, self.channels)
        resized = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return resized[None] + self.epsilon * torch.tanh(self._weights(thetas))[:, None]  # (P, B, C, H, W)


class Subspace(Transform):
    """Search a random k-dimensional subspace of another transform's θ (BBT, Sun et al. 2022):
    θ = A·z with A a fixed Gaussian (d, k) matrix, entries N(0, 1/k) so each θ_i has the scale
    of one z_j. Fewer dimensions make zeroth-order and evolutionary search tractable."""

    def __init__(self, inner: Transform, dim: int, seed: int = 0):
        self.inner, self.kind = inner, f"{inner.kind}+subspace"
        self.target_shape, self.source_shape = inner.target_shape, inner.source_shape
        self.low, self.high = inner.low, inner.high
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(inner.num_params, dim, generator=generator) / math.sqrt(dim)  # (d, k)
        self.num_params = int(dim)

    def _program(self, thetas, x):
        return self.inner._program(thetas @ self.projection.T, x)    # (P, k) → (P, d) → (P, B, ...)

    def describe(self):
        return {**self.inner.describe(), "kind": self.kind, "num_params": self.num_params,
                "full_params": self.inner.num_params}
