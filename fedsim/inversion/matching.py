"""Gradient-matching attacks on an :class:`~fedsim.api.Observation`: their shared
parameters, threat model and run.

:class:`MatchingAttack` is the base of the DLG family (DLG, iDLG, WDLG, Inverting
Gradients): a subclass (``MatchingAttack[DLGParams]``, its parameters a
:class:`MatchingParams`) only says how it configures the engine
(:func:`fedsim.inversion.gradient_matching.match_gradients`).
:func:`reconstruct_by_matching` runs the engine on one observation: it reconstructs
``observation.batch_size`` images of ``observation.input_shape`` with pixel values
in [0, 1] (a :class:`~fedsim.api.Reconstruction`), from the update read as a
gradient (a FedAvg weight delta as ``-delta / (lr · steps)``, or through the
simulated local SGD steps, :func:`local_sgd`). ``ignore_layers`` leaves chosen
parameters out of the matching objective (:func:`ignored_parameters`): the adaptive
answer to a defence that perturbs one layer's gradient only (Soteria).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypeVar

import torch
from pydantic import Field
from torch import nn

from fedsim.api import Attack, AttackParams, Knowledge, Observation, Reconstruction, UpdateKind
from fedsim.inversion.gradient_matching import LocalSGD, MatchConfig, match_gradients
from fedsim.inversion.labels import recover_labels

FedAvgObjective = Literal["delta_as_gradient", "unrolled"]
"""How a gradient-matching attack reads a FedAvg weight delta: as the gradient
``-delta / (lr · steps)``, or by simulating the local SGD steps (:class:`LocalSGD`)."""


class MatchingParams(AttackParams):
    """Budget and initialisation shared by the gradient-matching attacks."""

    iterations: int = Field(300, ge=1, le=1_000_000, description="optimiser steps per restart")
    lr: float = Field(1.0, gt=0.0, description="optimiser learning rate")
    init: Literal["normal", "uniform"] = Field(
        "normal", description="dummy image initialisation: N(0,1) or U(0,1)"
    )
    restarts: int = Field(1, ge=1, le=100, description="independent trials; lowest loss wins")
    loss_threshold: float = Field(
        0.0, ge=0.0, description="stop a restart once the objective is this low"
    )
    max_seconds: float | None = Field(None, gt=0.0, description="wall-time budget (all restarts)")
    tolerance: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="convergence stop: end a restart once its best objective improved by at "
        "most this fraction over the last `window` steps; 0 turns the stop off",
    )  # fmt: skip
    window: int | None = Field(
        None, ge=1, le=1_000_000,
        description="steps (as `iterations` counts them) over which `tolerance` is measured",
    )  # fmt: skip
    stall_loss: float = Field(
        float("inf"), gt=0.0,
        description="a plateau above this objective value (the objective's own units) is a "
        "stall and moves on to the next restart; at or below it the attack has converged",
    )  # fmt: skip
    fedavg_objective: FedAvgObjective = Field(
        "delta_as_gradient",
        description="FedAvg deltas: matched as the gradient -delta/(lr*steps), or 'unrolled' "
        "(the client's local SGD steps simulated on the dummy data)",
    )
    ignore_layers: list[str] = Field(
        default_factory=list,
        description="parameters left out of the matching objective: a parameter's name "
        "('fc.weight') or a module's ('fc': all its parameters), e.g. the layer a defence "
        "perturbs (soteria); a name matching no parameter is refused. Label recovery "
        "(iDLG's rule, DLG's gradient_sign start) still reads the head's gradient",
    )

    def budget(self) -> dict[str, Any]:
        """The budget fields as :class:`MatchConfig` keyword arguments."""
        return self.model_dump(include=set(MatchingParams.model_fields) - NOT_BUDGET)


NOT_BUDGET = frozenset({"fedavg_objective", "ignore_layers"})
"""The :class:`MatchingParams` fields that :func:`reconstruct_by_matching` applies itself."""


MP = TypeVar("MP", bound=MatchingParams)
"""A gradient-matching attack's parameter class."""


class MatchingAttack(Attack[MP]):
    """Base of the gradient-matching attacks: the threat model they share and their run.

    They need the model and the batch size (the number of dummy images), and on a
    FedAvg delta the local hyperparameters (the learning rate and steps that scale
    the delta, and for ``fedavg_objective = "unrolled"`` the local batch size). Given
    labels they use them; otherwise :attr:`recovers_labels` attacks read them off the
    head's gradient (:func:`recover_labels`) and the others optimise them.
    Subclasses implement :meth:`match_config`.
    """

    needs: ClassVar[frozenset[Knowledge]] = frozenset({"model", "batch_size"})
    uses: ClassVar[frozenset[Knowledge]] = frozenset({"labels", "local_hyperparameters"})
    recovers_labels: ClassVar[bool] = True

    @classmethod
    def knowledge_needed(cls, kind: UpdateKind) -> frozenset[Knowledge]:
        return cls.needs | ({"local_hyperparameters"} if kind == "delta" else set())

    @abstractmethod
    def match_config(self, observation: Observation) -> MatchConfig:
        """The engine's configuration for ``observation`` (without ``unroll``)."""

    def reconstruct(self, observation: Observation) -> Reconstruction:
        labels, source = observation.labels, "given by the threat model (knows_labels)"
        if labels is None and self.recovers_labels:
            labels, source = recover_labels(observation), "recovered from the head's gradient"
        elif labels is None:
            source = "optimised jointly with the images"
        result = reconstruct_by_matching(
            observation, self.match_config(observation), labels, self.params.fedavg_objective,
            self.params.ignore_layers,
        )  # fmt: skip
        result.diagnostics["label_source"] = source
        return result


def local_sgd(observation: Observation) -> LocalSGD:
    """The client's local training as the observation describes it (FedAvg).

    The local batch size is :attr:`Observation.local_batch_size`, or the whole
    batch when it is withheld.
    """
    return LocalSGD(
        steps=observation.local_steps,
        lr=observation.lr,
        batch_size=observation.local_batch_size or observation.batch_size,
    )


def ignored_parameters(model: nn.Module, ignore_layers: Sequence[str]) -> frozenset[str]:
    """The names of ``model``'s parameters that ``ignore_layers`` selects.

    Each entry is a parameter name (``fc.weight``) or a module name (``fc``, ``body.0``),
    which selects every parameter under that module (``name == entry`` or
    ``name.startswith(entry + ".")``, so ``body.1`` does not select ``body.10.weight``).

    Raises:
        ValueError: an entry selects no parameter (the message lists the model's modules).
    """
    names = [name for name, _ in model.named_parameters()]
    selected: set[str] = set()
    for entry in ignore_layers:
        matches = {n for n in names if n == entry or n.startswith(entry + ".")}
        if not matches:
            modules = sorted({n.rpartition(".")[0] for n in names} - {""})
            raise ValueError(
                f"ignore_layers: {entry!r} names no parameter or module of the model "
                f"(its modules with parameters: {', '.join(modules)})"
            )
        selected |= matches
    return frozenset(selected)


DELTA_AS_GRADIENT = "weight delta treated as gradient: -delta / (lr * steps)"


def reconstruct_by_matching(
    observation: Observation,
    config: MatchConfig,
    labels: torch.Tensor | None = None,
    fedavg_objective: FedAvgObjective = "delta_as_gradient",
    ignore_layers: Sequence[str] = (),
) -> Reconstruction:
    """Run :func:`match_gradients` on ``observation`` and wrap the result.

    With ``labels`` (e.g. from :func:`recover_labels`) only images are optimised
    and the labels are recorded in the diagnostics as ``recovered_labels``. A
    FedAvg delta is matched as a gradient, or with ``fedavg_objective =
    "unrolled"`` through the simulated local steps (:func:`local_sgd`); the record
    says which in ``diagnostics.gradient_source``. When the observation carries
    the clients' :attr:`~Observation.training_regulariser`, the simulated gradient
    includes it (not yet in the unrolled objective, which then says so as
    ``unsupported``). The parameters ``ignore_layers`` selects
    (:func:`ignored_parameters`) are left out of the objective, in every one of these
    forms (listed as ``ignored_parameters`` in the diagnostics); an entry that selects
    no parameter, or entries that leave nothing to match, make the result
    ``unsupported`` with the reason.
    """
    local = local_sgd(observation) if observation.kind == "delta" else None
    known = observation.training_regulariser
    if local is not None and fedavg_objective == "unrolled":
        if known is not None:
            return Reconstruction.unsupported(
                "the unrolled FedAvg objective does not simulate the clients' extra "
                "training term (racecar); use fedavg_objective = 'delta_as_gradient'"
            )
        config = dataclasses.replace(config, unroll=local)
    model = observation.model()
    try:
        ignored = config.ignored | ignored_parameters(model, ignore_layers)
    except ValueError as exc:
        return Reconstruction.unsupported(str(exc))
    if ignored >= set(observation.update):
        return Reconstruction.unsupported(
            f"ignore_layers {list(ignore_layers)} leaves no parameter of the update to match"
        )
    config = dataclasses.replace(config, ignored=ignored)
    result = match_gradients(
        model, observation.gradient_estimate(),
        input_shape=observation.input_shape, batch_size=observation.batch_size,
        num_classes=observation.num_classes, labels=labels, config=config,
        seed=observation.seed, regulariser=None if known is None else known(model),
    )  # fmt: skip
    diagnostics: dict[str, Any] = result.diagnostics()
    if known is not None:
        diagnostics["training_loss"] = "cross-entropy + the clients' regulariser (known)"
    if labels is not None:
        diagnostics["recovered_labels"] = labels.tolist()
    if config.ignored:
        diagnostics["ignored_parameters"] = sorted(config.ignored)
    if config.unroll is not None:
        diagnostics["gradient_source"] = (
            f"weight delta matched by unrolling {config.unroll.steps} local SGD steps "
            f"(lr {config.unroll.lr:g}, local batch {config.unroll.batch_size})"
        )
    elif local is not None:
        diagnostics["gradient_source"] = DELTA_AS_GRADIENT
    if result.images is None:
        return Reconstruction.failed(result.failure, **diagnostics)
    return Reconstruction(result.images, result.labels, diagnostics=diagnostics)
