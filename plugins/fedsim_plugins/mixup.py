"""MixUp and InstaHide: the client trains on mixtures of its images (training stage).

Both replace each image of a training step by a convex combination of ``k``
images and its label by the same combination of their one-hot labels; the upload
is the gradient (FedSGD) or weight delta (FedAvg) of the loss on these mixtures,
so an attacker inverting it recovers (at best) the mixtures, which fedsim scores
against the real images. Neither gives a formal guarantee.

- ``mixup``: Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk
  Minimization", ICLR 2018 (arXiv:1710.09412). The coefficients are
  ``λ ~ Dirichlet(α, …, α)`` over ``k`` images: for the paper's ``k = 2``,
  ``λ ~ Beta(α, α)`` on the sample itself and ``1 − λ`` on its partner (the paper
  mentions Dirichlet weights over three or more examples, which gave it no further
  accuracy gain). A larger ``α`` mixes more evenly; ``α = 0`` does not mix.
- ``instahide``: Huang, Song, Li & Arora, "InstaHide: Instance-hiding Schemes for
  Private Distributed Learning", ICML 2020 (arXiv:2010.02772), the *inside-dataset*
  variant: the ``k − 1`` partners come from the client's own private data (the
  cross-dataset variant mixes in images of a large public dataset, which fedsim
  does not have). The coefficients are those of the authors' implementation:
  ``|g| / Σ|g|`` with ``g ~ N(0, I_k)``, drawn again while one exceeds the paper's
  bound ``c1`` (``max_coefficient``; the authors' default 0.65). The mixture ``m``
  is mapped to [-1, 1] as the paper assumes and the sign of each value flipped by
  a random ±1 mask σ: the encoding ``σ ∘ (2m − 1)``. fedsim's models take images
  in [0, 1], so the client trains on ``(1 + σ ∘ (2m − 1)) / 2``, each value ``m``
  or ``1 − m``: the same encoding in the models' coordinates. InstaHide does not
  hide the images: Carlini et al., "Is Private Learning Possible with Instance
  Encoding?", IEEE S&P 2021 (arXiv:2011.05315), recover the private images of the
  InstaHide challenge from their encodings, using that each private image is in
  many encodings (as a client's images are over its steps and rounds).

Who is mixed with whom: the sample itself has the first coefficient ``λ_0``; its
``k − 1`` partners are drawn uniformly, with replacement, from the client's whole
shard (``task.images``), afresh for every sample of every step, a partner
identical to its sample (the sample itself or a copy) being drawn again, so that
``λ_0`` is exactly the share of the sample's own image. Drawing from the shard
rather than the batch is what a client holding its data would do, it mixes a
batch of one, and a partner is then usually an image the attacker's batch does
not contain. The batch, the step count and ``TrainingResult.batch`` (the real,
unmixed images: the batch for FedSGD, the shard for FedAvg) are those of plain
training (:func:`fedsim.training.local.train_locally`); the attacker's batch size
stays the batch size.

The loss of a mixture is the cross-entropy against its soft label
``Σ_j λ_j onehot(y_j)``, i.e. ``Σ_j λ_j CE(f(x̃), y_j)``, averaged over the batch.

Randomness: each step draws, from ``task.generator`` and in this order, the
coefficients, the partners and (InstaHide) the masks — a fresh one-time key per
mixed sample and per step; nothing is drawn when ``k = 1`` (or ``α = 0``) without
sign flip, which is then plain training draw for draw.

Measurements (means over every mixed sample of every step): ``max_coefficient``,
the largest coefficient (how much of the dominant image survives), and
``own_coefficient``, the sample's own coefficient.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedsim.api import Defence, DefenceParams, LocalTraining, TrainingResult
from fedsim.training.local import train_locally


@dataclass(frozen=True)
class Mixture:
    """One step's mixed batch.

    Attributes:
        images: ``(B, C, H, W)`` in [0, 1]: what the model trains on.
        labels: ``(B, k)`` int64: the labels of the mixed images; column 0 is the
            batch's own label.
        coefficients: ``(B, k)``, non-negative, each row summing to 1; column 0 is
            the sample's own coefficient.
        partners: ``(B, k − 1)`` int64: the partners' positions in the shard.
        signs: ``(B, C, H, W)`` of ±1 (the sign-flip mask), or ``None`` without
            sign flip.
    """

    images: torch.Tensor
    labels: torch.Tensor
    coefficients: torch.Tensor
    partners: torch.Tensor
    signs: torch.Tensor | None


def mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    shard: tuple[torch.Tensor, torch.Tensor],
    coefficients: torch.Tensor,
    sign_flip: bool,
    generator: torch.Generator,
) -> Mixture:
    """Mix each image of a batch with ``k − 1`` partners from ``shard``.

    Args:
        images: ``(B, C, H, W)`` in [0, 1]: the batch.
        labels: ``(B,)`` int64.
        shard: ``(N, C, H, W)`` images in [0, 1] and ``(N,)`` labels to draw partners
            from: uniformly, with replacement, a partner drawn again while it is
            identical to its sample (the sample itself, or a copy of it).
        coefficients: ``(B, k)`` rows on the simplex; column 0 weighs the batch's image.
        sign_flip: flip the sign of each value (every channel of every pixel) of each
            mixture, centred on [-1, 1], with probability 1/2 (InstaHide).
        generator: draws the partners, then the masks.

    Returns:
        The mixtures ``m = Σ_j λ_j x_j``, or ``(1 + σ ∘ (2m − 1)) / 2`` with sign flip.

    Raises:
        ValueError: ``k > 1`` and the shard holds no two different images.
    """
    pool_images, pool_labels = shard
    partners = torch.randint(
        len(pool_labels), (len(labels), coefficients.shape[1] - 1), generator=generator
    )
    while bool((same := _identical(pool_images[partners], images)).any()):
        if not bool((pool_images != pool_images[:1]).any()):
            raise ValueError("mixing needs two different images in the client's shard")
        partners[same] = torch.randint(len(pool_labels), (int(same.sum()),), generator=generator)
    sources = torch.cat([images[:, None], pool_images[partners]], dim=1)
    mixed = torch.einsum("bk,bk...->b...", coefficients.to(images), sources)
    signs = None
    if sign_flip:
        signs = torch.randint(0, 2, mixed.shape, generator=generator).to(mixed) * 2 - 1
        mixed = (1 + signs * (2 * mixed - 1)) / 2
    all_labels = torch.cat([labels[:, None], pool_labels[partners]], dim=1)
    return Mixture(mixed, all_labels, coefficients, partners, signs)


def _identical(partners: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(B, k − 1)``: whether each partner ``(B, k − 1, C, H, W)`` equals its sample
    ``(B, C, H, W)`` pixel for pixel."""
    return (partners == images[:, None]).flatten(2).all(dim=2)


def soft_cross_entropy(logits: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """Mean over the batch of ``Σ_j λ_j CE(logits, y_j)``: cross-entropy against the
    soft labels ``Σ_j λ_j onehot(y_j)`` (``logits``: ``(B, num_classes)``)."""
    target = torch.zeros_like(logits).scatter_add_(
        1, mixture.labels, mixture.coefficients.to(logits.dtype)
    )
    return F.cross_entropy(logits, target)


class _CoefficientMeter:
    """Running means of the largest and of the own (column 0) mixing coefficient."""

    def __init__(self) -> None:
        self.largest = self.own = 0.0
        self.count = 0

    def add(self, coefficients: torch.Tensor) -> None:
        self.largest += float(coefficients.max(dim=1).values.sum())
        self.own += float(coefficients[:, 0].sum())
        self.count += len(coefficients)

    def as_dict(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {"max_coefficient": self.largest / count, "own_coefficient": self.own / count}


M = TypeVar("M", bound=DefenceParams)
"""A mixing defence's parameter class."""


class MixingDefence(Defence[M]):
    """Training on mixtures (see the module's docstring); subclasses say how the
    coefficients are drawn (:meth:`coefficients`) and whether signs are flipped
    (:meth:`flips_signs`)."""

    stages = ("training",)
    formal_guarantee = False

    @abstractmethod
    def coefficients(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, k)`` mixing coefficients, rows on the simplex, column 0 the sample's own;
        ``(n, 1)`` ones (drawing nothing) when the defence does not mix."""

    @abstractmethod
    def flips_signs(self) -> bool:
        """Whether each mixture's pixels get a random sign flip."""

    def train(self, task: LocalTraining) -> TrainingResult:
        meter = _CoefficientMeter()

        def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            weights = self.coefficients(len(y), task.generator)
            mixture = mix(
                x, y, (task.images, task.labels), weights, self.flips_signs(), task.generator
            )
            meter.add(weights)
            return soft_cross_entropy(task.model(mixture.images), mixture)

        result = train_locally(task, objective)
        result.measurements.update(meter.as_dict())
        return result


class MixUpParams(DefenceParams):
    alpha: float = Field(
        1.0, ge=0.0,
        description="α of the Dirichlet(α, …, α) coefficients (Beta(α, α) for k = 2): larger "
        "mixes more evenly; 0 does not mix",
    )  # fmt: skip
    k: int = Field(2, ge=1, description="images per mixture: the sample and k − 1 partners")


class MixUp(MixingDefence[MixUpParams]):
    name = "mixup"
    summary = (
        "MixUp: trains on Dirichlet(α)-weighted mixtures of each image with k − 1 others of "
        "the client's shard, with soft labels."
    )
    Params = MixUpParams

    def coefficients(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.params.alpha == 0 or self.params.k == 1:
            return torch.ones(n, 1)
        # torch's Dirichlet sampler takes no generator: NumPy's, seeded from ``generator``.
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        draws = np.random.default_rng(seed).dirichlet([self.params.alpha] * self.params.k, n)
        return torch.from_numpy(draws).float()

    def flips_signs(self) -> bool:
        return False


class InstaHideParams(DefenceParams):
    k: int = Field(4, ge=1, description="images per encoding: the sample and k − 1 partners")
    max_coefficient: float = Field(
        0.65, gt=0.5, le=1.0,
        description="c1: upper bound of any one coefficient (k ≥ 2; the authors' default)",
    )  # fmt: skip
    sign_flip: bool = Field(
        True, description="flip the sign of each value of the centred mixture 2m − 1 at random"
    )


class InstaHide(MixingDefence[InstaHideParams]):
    name = "instahide"
    summary = (
        "InstaHide (inside-dataset): MixUp of k images of the client's shard, then a random "
        "pixel-wise sign flip; soft labels. Broken by Carlini et al. 2021."
    )
    Params = InstaHideParams

    def coefficients(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k, bound = self.params.k, self.params.max_coefficient
        if k == 1:
            return torch.ones(n, 1)
        weights = torch.empty(n, k)
        redraw = torch.ones(n, dtype=torch.bool)
        while bool(redraw.any()):
            g = torch.randn(int(redraw.sum()), k, generator=generator).abs()
            weights[redraw] = g / g.sum(dim=1, keepdim=True)
            redraw = weights.max(dim=1).values > bound
        return weights

    def flips_signs(self) -> bool:
        return self.params.sign_flip
