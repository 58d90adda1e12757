import math

import pytest
import torch

from blackbox_reprog.program.transforms import TRANSFORMS


def test_signal_program_places_the_znormalised_series_in_the_middle():
    t = TRANSFORMS.make("signal", (24,), (1024,), (-10.0, 10.0))
    x = torch.randn(3, 24) * 5 + 2                               # (B, T)
    out = t(torch.zeros(1, t.num_params), x)                     # (1, B, L)
    assert out.shape == (1, 3, 1024) and t.num_params == 1024
    middle = out[0, :, 500:524]
    assert torch.allclose(middle.mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(middle.std(dim=1), torch.ones(3), atol=1e-5)
    assert out[0, :, :500].abs().max() == 0 and out[0, :, 524:].abs().max() == 0


def test_signal_program_never_writes_over_the_target_and_clips():
    t = TRANSFORMS.make("signal", (24,), (1024,), (-3.0, 3.0), grid=16)
    x = torch.randn(2, 24)
    thetas = torch.randn(4, 16) * 10                             # (P, d)
    out = t(thetas, x)                                           # (P, B, L)
    zero = t(torch.zeros(1, 16), x)
    assert torch.equal(out[:, :, 500:524], zero.expand(4, -1, -1)[:, :, 500:524])
    assert out.max() <= 3.0 and out.min() >= -3.0 and out[:, :, :500].abs().max() == 3.0


def test_signal_grid_upsamples_linearly():
    t = TRANSFORMS.make("signal", (4,), (1024,), (-math.inf, math.inf), grid=2)
    out = t(torch.tensor([[0.0, 1.0]]), torch.randn(1, 4))[0, 0]
    assert out[0] == 0 and out[-1] == 1 and abs(out[255] - 255 / 1023) < 1e-6


def test_frame_program_keeps_the_centre_and_bounds_the_frame():
    t = TRANSFORMS.make("frame", (1, 8, 8), (3, 32, 32), (0.0, 1.0), inner=16, grid=4)
    assert t.num_params == 3 * 4 * 4
    x = torch.rand(2, 1, 8, 8)
    out = t(torch.randn(5, t.num_params) * 3, x)                 # (P, B, C, H, W)
    assert out.shape == (5, 2, 3, 32, 32)
    centre = out[:, :, :, 8:24, 8:24]
    assert torch.equal(centre, centre[:1].expand_as(centre))     # θ never touches the target
    assert torch.allclose(centre[0, :, 0], centre[0, :, 2])      # grey repeated to 3 channels
    assert out.min() >= 0 and out.max() <= 1
    grey = t(torch.zeros(1, t.num_params), x)
    assert torch.allclose(grey[0, 0, :, 0, 0], torch.full((3,), 0.5))   # θ = 0 → mid-grey frame


def test_additive_program_is_bounded_by_epsilon():
    t = TRANSFORMS.make("additive", (3, 16, 16), (3, 16, 16), (0.0, 1.0), epsilon=0.1)
    x = torch.full((1, 3, 16, 16), 0.5)
    out = t(torch.randn(3, t.num_params) * 100, x)
    assert (out - 0.5).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("kind, target, source, message", [
    ("signal", (2000,), (1024,), r"expected series of at most 1024 samples, got 2000 \(resample them with --set data.length=1024\)"),
    ("signal", (1, 8, 8), (1024,), "the signal program expects 1-D series"),
    ("frame", (24,), (3, 32, 32), "the frame program expects images"),
    ("warp", (24,), (1024,), "unknown transform.kind 'warp'"),
])
def test_mismatched_shapes_are_refused(kind, target, source, message):
    with pytest.raises(ValueError, match=message):
        TRANSFORMS.make(kind, target, source, (0.0, 1.0))


def test_transform_is_differentiable_for_the_white_box_path():
    t = TRANSFORMS.make("frame", (1, 8, 8), (3, 32, 32), (0.0, 1.0), grid=4)
    theta = torch.zeros(1, t.num_params, requires_grad=True)
    t(theta, torch.rand(2, 1, 8, 8)).sum().backward()
    assert theta.grad.abs().sum() > 0
