"""The classic comparison: a small network trained from scratch on the target data alone.

It sends no query. If it beats reprogramming, the user does not need the frozen model at
all — the benchmark shows it beside every method. One architecture per input kind, kept
small on purpose (the target sets are small): two convolutions and a global average for
series (L,) and images (C, H, W), a one-hidden-layer MLP otherwise. Adam, weight decay,
mini-batches; the epoch with the lowest validation loss is kept (early stopping).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from ..data import Splits


def small_network(shape: tuple[int, ...], classes: int, width: int = 32) -> nn.Module:
    """A network for one example of ``shape`` (no batch axis) → ``classes`` logits."""
    if len(shape) == 1:                                                     # a series (L,)
        return nn.Sequential(
            nn.Unflatten(1, (1, shape[0])),                                 # (B, L) → (B, 1, L)
            nn.Conv1d(1, width, 7, padding=3), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, classes))  # (B, classes)
    if len(shape) == 3:                                                     # an image (C, H, W)
        return nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))  # (B, classes)
    size = int(np.prod(shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(size, 4 * width), nn.ReLU(), nn.Linear(4 * width, classes))


def train_from_scratch(splits: Splits, *, seed: int = 0, epochs: int = 400, patience: int = 60,
                       batch_size: int = 64, lr: float = 1e-2, weight_decay: float = 1e-4) -> dict:
    """Train ``small_network`` on ``splits.train``, keep the epoch with the lowest validation
    loss, report its test accuracy. No query is sent."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, validation, test = splits.train, splits.validation, splits.test
    x, y = _standardised(train.x, train.x), torch.as_tensor(train.y)
    x_val, y_val = _standardised(validation.x, train.x), torch.as_tensor(validation.y)
    net = small_network(tuple(train.x.shape[1:]), train.num_classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    best = (float("inf"), copy.deepcopy(net.state_dict()), 0)
    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2:                       # batch norm needs two examples
                continue
            optimizer.zero_grad()
            loss_fn(net(x[index]), y[index]).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            validation_loss = float(loss_fn(net(x_val), y_val))
        if validation_loss < best[0]:
            best = (validation_loss, copy.deepcopy(net.state_dict()), epoch)
        elif epoch - best[2] >= patience:
            break
    net.load_state_dict(best[1])
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(_standardised(test.x[i:i + 1024], train.x)).argmax(1)
                               for i in range(0, len(test.x), 1024)])
    return {"test_accuracy": float((predicted == torch.as_tensor(test.y)).float().mean()),
            "best_epoch": best[2], "epochs": epoch, "parameters": sum(p.numel() for p in net.parameters()),
            "wall_seconds": round(time.perf_counter() - started, 2)}


def _standardised(x: np.ndarray, reference: np.ndarray) -> torch.Tensor:
    """Scaled by the train split's mean and standard deviation (one number each)."""
    return torch.as_tensor((x - reference.mean()) / (reference.std() + 1e-8), dtype=torch.float32)
