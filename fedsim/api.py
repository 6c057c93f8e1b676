"""The public plugin API of fedsim: the only module a plugin needs to import.

An *attack* receives an :class:`Observation` — exactly what an attacker at a
given position may see in one federated round — and returns a
:class:`Reconstruction`. A *defence* transforms a client's upload before it
leaves the client and reports what it measured. Plugins are registered through
Python entry points (groups ``fedsim.attacks`` and ``fedsim.defences``); each
entry point names a subclass of :class:`Attack` or :class:`Defence`.

Ground truth (the client's real batch) never appears here: fedsim scores a
reconstruction after the attack has returned.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedsim.analytic.banded import BandedCholesky, spatial_major
from fedsim.analytic.chain import Chain, Layer, UnsupportedModel, extract_chain
from fedsim.analytic.conv import ConvGeometry, ConvOperator
from fedsim.analytic.layers import Constraints, invert_linear, solve_conv_input
from fedsim.analytic.recursive import (
    ConvResult,
    ConvSolver,
    ConvStep,
    invert_chain,
    least_squares_step,
    solve_diagnostics,
)
from fedsim.attacks.gradient_matching import (
    DISTANCES,
    Distance,
    MatchConfig,
    MatchResult,
    match_gradients,
    total_variation,
)
from fedsim.attacks.labels import (
    Head,
    batch_label_counts,
    find_head,
    idlg_label,
    labels_from_counts,
)

__all__ = [
    "DISTANCES",
    "Attack",
    "AttackParams",
    "BandedCholesky",
    "Chain",
    "Constraints",
    "ConvGeometry",
    "ConvOperator",
    "ConvResult",
    "ConvSolver",
    "ConvStep",
    "Defence",
    "DefenceParams",
    "Distance",
    "Head",
    "Layer",
    "MatchConfig",
    "MatchResult",
    "MatchingParams",
    "Observation",
    "Position",
    "Reconstruction",
    "Status",
    "UnsupportedModel",
    "Update",
    "UpdateKind",
    "batch_label_counts",
    "extract_chain",
    "find_head",
    "global_norm",
    "idlg_label",
    "invert_chain",
    "invert_linear",
    "labels_from_counts",
    "least_squares_step",
    "match_gradients",
    "reconstruct_analytically",
    "reconstruct_by_matching",
    "recover_labels",
    "solve_conv_input",
    "solve_diagnostics",
    "spatial_major",
    "total_variation",
]

Position = Literal["server", "participant"]
"""Where the attacker sits: ``server`` sees every client's upload separately;
``participant`` sees only the round's aggregate (global model before/after)."""

UpdateKind = Literal["gradient", "delta"]
"""``gradient``: dL/dθ of the mean loss over the batch (FedSGD).
``delta``: θ_after − θ_before after local training (FedAvg)."""

Status = Literal["ok", "failed", "unsupported"]

Update = dict[str, torch.Tensor]
"""A model update keyed by parameter name (``model.named_parameters()``)."""


class AttackParams(BaseModel):
    """Base class of an attack's parameters; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DefenceParams(BaseModel):
    """Base class of a defence's parameters; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Observation:
    """What one attacker legitimately sees of one upload (or aggregate).

    Attributes:
        position: the attacker's position.
        round: federated round, 1-based.
        client_id: partition id of the client whose upload this is; ``None``
            for an aggregate seen by a participant.
        model_factory: builds a fresh, randomly initialised model of the
            architecture under attack; load :attr:`parameters` into it.
        parameters: the parameters the client started the round from.
        update: the upload after client-side defences, keyed by parameter name.
        kind: whether :attr:`update` is a gradient or a weight delta.
        input_shape: ``(C, H, W)`` of one input image; pixel values in [0, 1].
        num_classes: number of classes of the classification head.
        batch_size: number of samples behind the update (for an aggregate, the
            sum over the round's clients).
        lr: the clients' learning rate.
        local_steps: optimiser steps each client took (1 for FedSGD).
        device: where the attack should compute.
        seed: seed the attack must use for its randomness.
        labels: the batch's labels when the threat model grants them
            (``knows_labels`` on the attack), else ``None``.
    """

    position: Position
    round: int
    client_id: int | None
    model_factory: Callable[[], nn.Module]
    parameters: Mapping[str, torch.Tensor]
    update: Mapping[str, torch.Tensor]
    kind: UpdateKind
    input_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    lr: float
    local_steps: int
    device: torch.device
    seed: int
    labels: torch.Tensor | None = None

    def model(self) -> nn.Module:
        """A model with the observed starting parameters, on :attr:`device`, in eval mode."""
        model = self.model_factory()
        model.load_state_dict(dict(self.parameters), strict=False)
        return model.to(self.device).eval()

    def gradient_estimate(self) -> Update:
        """The update as a gradient: itself for FedSGD, ``-delta / (lr * steps)`` for FedAvg.

        For FedAvg this is an approximation (exact only for one local step);
        results record :attr:`kind` so the approximation is visible.
        """
        if self.kind == "gradient":
            return {k: v.to(self.device) for k, v in self.update.items()}
        scale = -1.0 / (self.lr * self.local_steps)
        return {k: (v * scale).to(self.device) for k, v in self.update.items()}


@dataclass
class Reconstruction:
    """What an attack returns.

    Attributes:
        images: ``(B, C, H, W)`` float tensor in [0, 1], or ``None`` when failed.
        labels: ``(B,)`` int64 tensor of recovered labels, or ``None``.
        status: ``ok``, ``failed`` (with :attr:`reason`) or ``unsupported``.
        reason: why it failed or is unsupported; empty when ok.
        diagnostics: the attack's own numbers (JSON-serialisable): e.g.
            ``loss_curve`` (list of floats), ``iterations``, ``seconds``.
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None = None
    status: Status = "ok"
    reason: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status == "ok" and self.images is None:
            raise ValueError("an ok Reconstruction needs images")
        if self.images is not None and self.images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(self.images.shape)}")

    @classmethod
    def failed(cls, reason: str, **diagnostics: Any) -> Reconstruction:
        return cls(images=None, status="failed", reason=reason, diagnostics=diagnostics)

    @classmethod
    def unsupported(cls, reason: str) -> Reconstruction:
        return cls(images=None, status="unsupported", reason=reason)


class Attack(ABC):
    """An attacker plugin. Subclasses set the class attributes and implement
    :meth:`reconstruct`; fedsim validates the scenario's parameters against
    :attr:`Params` and passes the validated instance to ``__init__``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    def supports(self, model: nn.Module) -> str | None:
        """``None`` if the attack can run on ``model``, else the reason it cannot."""
        return None

    @abstractmethod
    def reconstruct(self, observation: Observation) -> Reconstruction:
        """Reconstruct the batch behind ``observation.update``."""


class Defence(ABC):
    """A defence plugin acting on a client's upload before it leaves the client.

    Attributes:
        formal_guarantee: whether the defence alone gives a differential-privacy
            guarantee (plain noise without clipping does not).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    formal_guarantee: ClassVar[bool] = False
    Params: ClassVar[type[DefenceParams]] = DefenceParams

    def __init__(self, params: DefenceParams) -> None:
        self.params = params

    @abstractmethod
    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        """Return the defended update and measurements (e.g. ``noise_std``).

        ``update`` must not be modified in place. ``generator`` is the only source
        of randomness allowed, so that runs are reproducible.
        """


def global_norm(update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors of ``update`` taken together."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))


def recover_labels(observation: Observation) -> torch.Tensor:
    """The batch's labels read off the head's gradient, ``(B,)`` int64, sorted.

    One sample: the iDLG rule (:func:`idlg_label`). Several: per-class counts
    (:func:`batch_label_counts`). Raises ``ValueError`` if the model has no
    linear layer with ``num_classes`` outputs.
    """
    model = observation.model()
    head = find_head(model, observation.num_classes)
    gradient = observation.gradient_estimate()
    if observation.batch_size == 1:
        return torch.tensor([idlg_label(gradient, head)])
    counts = batch_label_counts(
        gradient, head, model, input_shape=observation.input_shape,
        batch_size=observation.batch_size, seed=observation.seed,
    )  # fmt: skip
    return labels_from_counts(counts)


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

    def budget(self) -> dict[str, Any]:
        """These fields as :class:`MatchConfig` keyword arguments."""
        return self.model_dump(include=set(MatchingParams.model_fields))


def reconstruct_by_matching(
    observation: Observation, config: MatchConfig, labels: torch.Tensor | None = None
) -> Reconstruction:
    """Run :func:`match_gradients` on ``observation`` and wrap the result.

    With ``labels`` (e.g. from :func:`recover_labels`) only images are optimised
    and the labels are recorded in the diagnostics as ``recovered_labels``.
    """
    result = match_gradients(
        observation.model(), observation.gradient_estimate(),
        input_shape=observation.input_shape, batch_size=observation.batch_size,
        num_classes=observation.num_classes, labels=labels, config=config,
        seed=observation.seed,
    )  # fmt: skip
    diagnostics: dict[str, Any] = result.diagnostics()
    if labels is not None:
        diagnostics["recovered_labels"] = labels.tolist()
    if observation.kind == "delta":
        diagnostics["gradient_source"] = "weight delta treated as gradient: -delta / (lr * steps)"
    if result.images is None:
        return Reconstruction.failed(result.failure, **diagnostics)
    return Reconstruction(result.images, result.labels, diagnostics=diagnostics)


def reconstruct_analytically(
    observation: Observation,
    conv_solver: ConvSolver | None,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Reconstruction:
    """Run the top-down recursion (:func:`invert_chain`) on one sample's update.

    Returns ``unsupported`` (never raises) for a batch larger than one or a model
    that is not a supported chain. The label is recovered with the iDLG rule
    unless the observation carries labels. ``postprocess`` maps the ``(1, C, H, W)``
    image in [0, 1] to a new one (e.g. denoising).
    """
    if observation.batch_size != 1:
        return Reconstruction.unsupported(
            f"analytic attacks here reconstruct a single image; this update comes from a batch of "
            f"{observation.batch_size}"
        )
    model = observation.model()
    try:
        chain = extract_chain(model, observation.input_shape)
        inversion = invert_chain(chain, observation.gradient_estimate(), conv_solver)
    except UnsupportedModel as exc:
        return Reconstruction.unsupported(str(exc))
    except ValueError as exc:
        return Reconstruction.failed(str(exc))
    raw = inversion.image.float()
    images = raw.clamp(0, 1)[None]
    if postprocess is not None:
        images = postprocess(images)
    diagnostics: dict[str, Any] = {
        "layers": inversion.layers,
        "raw_range": [float(raw.min()), float(raw.max())],
        "clipped_before_inversion": inversion.clipped,
    }
    if observation.kind == "delta":
        diagnostics["gradient_source"] = "weight delta treated as gradient: -delta / (lr * steps)"
    if observation.labels is not None:
        labels = observation.labels.detach().cpu().long()
        diagnostics["label_source"] = "given by the threat model (knows_labels)"
    else:
        labels = recover_labels(observation)
        diagnostics["label_source"] = "recovered (iDLG rule)"
        diagnostics["recovered_labels"] = labels.tolist()
    return Reconstruction(images.to(torch.float32), labels, diagnostics=diagnostics)
