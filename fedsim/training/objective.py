"""The clients' training objective, chosen by ``[federation] training``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.scenario import FederationConfig
from fedsim.training.local import Objective
from fedsim.training.racecar import RacecarRegulariser, RacecarTerm


def training_objective(
    federation: FederationConfig, model: nn.Module, input_shape: tuple[int, int, int]
) -> Objective:
    """The loss the clients minimise: mean cross-entropy of ``model``, plus the racecar
    loss when ``federation.training == "racecar"`` (gradients reach ``model``'s parameters).

    Raises:
        UnsupportedModel: racecar training on a model that is not a conv/linear chain.
        ValueError: ``lambdas`` does not match the model's number of layers.
    """
    if federation.training == "racecar":
        config = federation.racecar
        return RacecarTerm(model, input_shape, config.variant, config.lambdas).objective

    def cross_entropy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    return cross_entropy


def known_regulariser(
    federation: FederationConfig, input_shape: tuple[int, int, int]
) -> RacecarRegulariser | None:
    """The clients' loss beyond cross-entropy, as the server (which sets the training
    plan) knows it: ``None`` for standard training."""
    if federation.training != "racecar":
        return None
    lambdas = federation.racecar.lambdas
    return RacecarRegulariser(
        input_shape,
        federation.racecar.variant,
        tuple(lambdas) if isinstance(lambdas, list) else lambdas,
    )
