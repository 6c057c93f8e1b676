"""A test-only model that fails on purpose, to exercise fedsim's failure handling.

Scenarios name it by import path (``model.name = "tripwire:Tripwire"``; pytest puts
``tests/`` on ``sys.path`` and Flower's Ray workers inherit it). It never ships
with fedsim.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def fingerprint(images: torch.Tensor) -> float:
    """The pixel sum of a batch, rounded: identifies a client's batch of a round."""
    return round(float(images.sum()), 3)


class Tripwire(nn.Module):
    """A linear classifier of ``(channels, size, size)`` images.

    A forward pass in training mode (a client's local step; the server evaluates
    and attacks in eval mode) on a batch whose :func:`fingerprint` is in
    ``fail_on`` raises ``RuntimeError``; one in ``stall_on`` first sleeps
    ``stall_seconds``.
    """

    def __init__(
        self,
        channels: int = 1,
        size: int = 8,
        num_classes: int = 10,
        fail_on: list[float] | None = None,
        stall_on: list[float] | None = None,
        stall_seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.fail_on, self.stall_on = set(fail_on or []), set(stall_on or [])
        self.stall_seconds = stall_seconds
        self.head = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            key = fingerprint(x)
            if key in self.fail_on:
                raise RuntimeError(f"tripwire: batch {key} fails on purpose")
            if key in self.stall_on:
                time.sleep(self.stall_seconds)
        return self.head(x.flatten(1))
