"""How a round's aggregate moves the global model: FedSGD's step, FedAvg's mean delta,
and FedAvgM's server momentum.

FedAvgM is Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification" (arXiv:1909.06335, 2019): the
server treats the averaged update as a (negative) gradient and takes an SGD step
with momentum on it, PyTorch's convention (v ← μ·v + step, θ ← θ + v, the buffer
starting at the first step).
"""

from __future__ import annotations

from typing import Literal

import torch

from fedsim.api import Update


class ServerStep:
    """The server's update rule, with the momentum buffer it keeps across rounds.

    Args:
        protocol: ``fedsgd`` (the aggregate is a mean gradient; the step is
            −``lr`` × it) or ``fedavg`` (the aggregate is a mean weight delta; the
            step is the delta itself).
        lr: the clients' learning rate, which FedSGD's server applies.
        momentum: μ in [0, 1); 0 applies each round's step as it is.
    """

    def __init__(self, protocol: Literal["fedsgd", "fedavg"], lr: float, momentum: float) -> None:
        self.scale = -lr if protocol == "fedsgd" else 1.0
        self.momentum = momentum
        self.velocity: Update = {}

    def __call__(
        self, start: dict[str, torch.Tensor], aggregate: Update
    ) -> dict[str, torch.Tensor]:
        """The next global state: ``start`` (the round's global model, by state-dict key)
        plus the step; keys without an aggregate (buffers) are kept as they are."""
        steps = {k: self.scale * v for k, v in aggregate.items()}
        if self.momentum > 0:
            for k, step in steps.items():
                buffer = self.velocity.get(k)
                self.velocity[k] = step if buffer is None else self.momentum * buffer + step
            steps = self.velocity
        return {k: v + steps[k] if k in steps else v for k, v in start.items()}
