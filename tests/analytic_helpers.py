"""Shared builders for the analytic-attack and audit tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.api import Observation
from fedsim.data.datasets import load_digits, load_photos


def photo(size: int = 32, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One centred photo crop ``(1, 3, size, size)`` in [0, 1] and its label."""
    photos = load_photos(size, 1, 0)
    return photos.images[index : index + 1].float() / 255.0, photos.labels[index : index + 1]


def digit(size: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One of scikit-learn's handwritten digits ``(1, 1, size, size)`` in [0, 1] and its label."""
    digits = load_digits(size)
    return digits.images[index : index + 1].float() / 255.0, digits.labels[index : index + 1]


def observe(
    factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, classes: int
) -> Observation:
    """What a server sees of one FedSGD upload of the batch ``(x, y)``."""
    model = factory()
    loss = F.cross_entropy(model(x), y)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    return Observation(
        position="server", round=1, client_id=0, model_factory=factory,
        parameters=dict(model.state_dict()), update=dict(zip(names, grads, strict=True)),
        kind="gradient", input_shape=tuple(x.shape[1:]), num_classes=classes,
        batch_size=len(x), lr=0.1, local_steps=1, device=torch.device("cpu"), seed=0,
    )  # fmt: skip


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(x + self.conv(x)).flatten(1))


class Rectified(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


class BiasedChain(nn.Module):
    """Two biased 3×3 tanh convs on ``1 × size × size`` inputs, then a head to 10 classes.

    The first (padding 1, 3 channels) triples the number of elements, so its
    output fills a proper affine subspace (COPA's pull-back applies above it);
    the second (2 channels, no padding) sees ``3·size²`` inputs through only
    ``2·(size − 2)² + 54`` constraints, so R-GAP cannot determine its input.
    """

    def __init__(self, size: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * (size - 2) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


class MLP(nn.Module):
    """Flatten, two tanh hidden layers (no bias below the head), a head with bias."""

    def __init__(self, inputs: int = 3 * 8 * 8) -> None:
        super().__init__()
        self.hidden1 = nn.Linear(inputs, 300, bias=False)
        self.hidden2 = nn.Linear(300, 200)
        self.head = nn.Linear(200, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden1(x.flatten(1)))
        return self.head(torch.sigmoid(self.hidden2(h)))


UNSUPPORTED = [
    (Pooled, "'pool' (MaxPool2d): pooling"),
    (Normed, "'bn' (BatchNorm2d): normalisation"),
    (Residual, "residual connection"),
]
"""Models outside the chain and the message naming their offending layer (8×8 inputs)."""
