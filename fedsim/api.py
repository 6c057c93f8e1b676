"""The public plugin API of fedsim: the only module a plugin needs to import.

An *attack* receives an :class:`Observation` — exactly what an attacker at a
given position may see in one federated round — and returns a
:class:`Reconstruction`. A *defence* declares the :data:`Stage` it acts at —
a client's upload before it leaves the client, the client's training itself
(DP-SGD), or the server's aggregate (central DP) — transforms what passes
there and reports what it measured. Plugins are registered through
Python entry points (groups ``fedsim.attacks`` and ``fedsim.defences``); each
entry point names a subclass of :class:`Attack` or :class:`Defence`.

Ground truth (the client's real batch) never appears here: fedsim scores a
reconstruction after the attack has returned.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
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
from fedsim.analytic.spectrum import top_right_singular_vectors
from fedsim.attacks.gradient_matching import (
    DISTANCES,
    Distance,
    LocalSGD,
    MatchConfig,
    MatchResult,
    Regulariser,
    match_gradients,
    total_variation,
    unrolled_gradient,
)
from fedsim.attacks.labels import (
    Head,
    batch_label_counts,
    find_head,
    idlg_label,
    labels_from_counts,
)
from fedsim.defences.accounting import GaussianAccountant
from fedsim.defences.noise import (
    add_gaussian_noise,
    clip_update,
    global_norm,
    noise_ratio,
    weighted_mean,
)
from fedsim.threat import KNOWLEDGE, Knowledge, Position

__all__ = [
    "DISTANCES",
    "KNOWLEDGE",
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
    "FedAvgObjective",
    "GaussianAccountant",
    "Head",
    "Knowledge",
    "Layer",
    "LocalSGD",
    "LocalTraining",
    "MatchConfig",
    "MatchResult",
    "MatchingAttack",
    "MatchingParams",
    "Observation",
    "Position",
    "Reconstruction",
    "Regulariser",
    "Stage",
    "Status",
    "TrainingResult",
    "UnsupportedModel",
    "Update",
    "UpdateKind",
    "add_gaussian_noise",
    "batch_label_counts",
    "clip_update",
    "extract_chain",
    "find_head",
    "global_norm",
    "idlg_label",
    "invert_chain",
    "invert_linear",
    "labels_from_counts",
    "least_squares_step",
    "local_sgd",
    "match_gradients",
    "noise_ratio",
    "reconstruct_analytically",
    "reconstruct_by_matching",
    "recover_labels",
    "solve_conv_input",
    "solve_diagnostics",
    "spatial_major",
    "top_right_singular_vectors",
    "total_variation",
    "unrolled_gradient",
    "weighted_mean",
]

UpdateKind = Literal["gradient", "delta"]
"""``gradient``: dL/dθ of the mean loss over the batch (FedSGD).
``delta``: θ_after − θ_before after local training (FedAvg)."""

Status = Literal["ok", "failed", "unsupported"]

Stage = Literal["upload", "training", "aggregate"]
"""Where a defence acts, and so which attacker it can protect against:

- ``upload``: on each client's update, on the client, before it leaves
  (local DP, clipping, pruning, quantisation). Attackers at the server and
  participants both see only defended uploads.
- ``training``: inside the client's local training (DP-SGD): the update is
  born defended; likewise seen by both positions.
- ``aggregate``: on the server, where it combines the round's uploads
  (central DP). An attacker at the server sees the raw uploads before this
  stage, so it is not protected; a participant sees only the defended
  aggregate.
"""

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
        knowledge: the threat model's flags granted to this attacker (see
            :mod:`fedsim.threat`); what is not granted is withheld where the
            observation can withhold it (``labels``, ``local_batch_size``), and
            validation has refused attacks that need a flag not granted.
        local_batch_size: the clients' mini-batch size in local training (FedAvg),
            when ``local_hyperparameters`` are granted; else ``None``.
        training_regulariser: the clients' loss beyond the mean cross-entropy,
            known to the server because it sets the training plan: called with a
            model (e.g. :meth:`model`'s) it returns ``images -> scalar`` on that
            model, so that a simulated gradient is that of cross-entropy + this
            term, like the upload. ``None`` for standard training.
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
    knowledge: frozenset[Knowledge] = frozenset(KNOWLEDGE)
    local_batch_size: int | None = None
    training_regulariser: Callable[[nn.Module], Regulariser] | None = None

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
    :attr:`Params` and passes the validated instance to ``__init__``.

    Attributes:
        needs: the threat-model flags (:data:`Knowledge`) without which the attack
            cannot run; a scenario that grants fewer fails validation.
        uses: further flags the attack makes use of when granted (e.g. ``labels``:
            without them it recovers the labels itself).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    needs: ClassVar[frozenset[Knowledge]] = frozenset({"model"})
    uses: ClassVar[frozenset[Knowledge]] = frozenset()

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    def knowledge_needed(self, kind: UpdateKind) -> frozenset[Knowledge]:
        """The flags this instance needs to attack an update of ``kind`` (default :attr:`needs`)."""
        return self.needs

    def supports(self, model: nn.Module) -> str | None:
        """``None`` if the attack can run on ``model``, else the reason it cannot."""
        return None

    @abstractmethod
    def reconstruct(self, observation: Observation) -> Reconstruction:
        """Reconstruct the batch behind ``observation.update``."""


@dataclass(frozen=True)
class LocalTraining:
    """One client's local training, handed to a ``training``-stage defence.

    Attributes:
        model: the global model (parameters as received), in train mode; the
            defence trains it in place or a copy of it.
        images: ``(N, C, H, W)`` float in [0, 1]: the client's whole shard.
        labels: ``(N,)`` int64.
        protocol: ``fedsgd`` (upload one gradient of one batch) or ``fedavg``
            (upload the weight delta after ``epochs`` local epochs).
        batch_size: the scenario's (expected) batch size.
        lr: the local learning rate (SGD; FedSGD's is applied by the server).
        epochs: local epochs (FedAvg).
        generator: the only source of randomness allowed (sampling and noise):
            seeded from the scenario in simulation, from the client's OS entropy
            (unknown to the server) on the deployment engine.
    """

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    protocol: Literal["fedsgd", "fedavg"]
    batch_size: int
    lr: float
    epochs: int
    generator: torch.Generator


@dataclass
class TrainingResult:
    """What a ``training``-stage defence returns.

    Attributes:
        update: the upload by parameter name: the gradient (FedSGD) or the
            weight delta θ_after − θ_before (FedAvg).
        loss: mean training loss over the local steps.
        steps: optimiser steps taken (1 for FedSGD).
        batch: the samples behind the update (images, labels): the batch for
            FedSGD, the shard for FedAvg. Used only to score attacks.
        num_examples: the client's weight in FedAvg's mean (e.g. the expected
            batch size of a Poisson-sampled FedSGD batch, the shard size for FedAvg).
        measurements: as for :meth:`Defence.apply`.
    """

    update: Update
    loss: float
    steps: int
    batch: tuple[torch.Tensor, torch.Tensor]
    num_examples: int
    measurements: dict[str, float] = field(default_factory=dict)


class Defence:
    """A defence plugin. It declares where it acts and implements the hook of that stage.

    Attributes:
        stages: the :data:`Stage` values the defence can act at (shown by
            ``fedsim plugins``). :attr:`stage` is where *this instance* acts:
            ``stages[0]`` unless the plugin lets a parameter choose (it then
            overrides the property).
        formal_guarantee: whether the defence gives a differential-privacy
            guarantee, i.e. clips, adds calibrated noise *and* accounts for it
            (plain noise without clipping does not; pruning and quantisation
            do not).

    The hook of each stage (the others keep their default, which raises):

    - ``upload``: :meth:`apply`; ``training``: :meth:`train`;
      ``aggregate``: :meth:`aggregate`.

    Measurements are plain floats keyed by name. fedsim reads these keys
    where present: ``noise_std`` (configured std of the noise per coordinate,
    in the units of what it was added to), ``measured_noise_std`` (sample std
    of the noise actually drawn), ``noise_to_update_norm`` (L2 norm of the
    noise over that of what it was added to), ``epsilon`` and ``delta`` (the
    privacy spent so far, for defences with an accountant).

    A defence with a formal guarantee names in :attr:`public_measurements`
    those of its measurements that depend only on its parameters and its
    accountant (``noise_std``, ``epsilon``, ...). On a client, while such a
    defence acts, only these leave the client: the others (norms of the update,
    statistics of the noise drawn) would reveal what the guarantee protects.

    A defence that accumulates across rounds (an accountant) returns its
    state from :meth:`state_dict` (JSON-serialisable). fedsim keeps a client
    defence's state per client in Flower's ``Context.state`` and hands it back
    through :meth:`load_state_dict` the next time that client trains; a
    server defence lives for the whole federation.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    formal_guarantee: ClassVar[bool] = False
    public_measurements: ClassVar[frozenset[str]] = frozenset()
    stages: ClassVar[tuple[Stage, ...]] = ("upload",)
    Params: ClassVar[type[DefenceParams]] = DefenceParams

    def __init__(self, params: DefenceParams) -> None:
        self.params = params

    @property
    def stage(self) -> Stage:
        """Where this instance acts."""
        return self.stages[0]

    def supports(self, model: nn.Module) -> str | None:
        """``None`` if the defence can act on ``model``, else the reason it cannot."""
        return None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model every process of the federation uses (default: ``model`` unchanged).

        A defence may replace layers it cannot work with (e.g. Opacus's
        ``ModuleValidator.fix``) when the user opts in; the server, the
        clients and the attackers then all use the prepared model.
        """
        return model

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        """``upload`` stage: return the defended upload and measurements.

        ``update`` must not be modified in place. ``generator`` is the only source
        of randomness allowed: seeded from the scenario in simulation, so that runs
        are reproducible; from the client's OS entropy on the deployment engine.
        """
        raise NotImplementedError(f"defence {self.name!r} does not act on uploads")

    def train(self, task: LocalTraining) -> TrainingResult:
        """``training`` stage: run the client's local training and return its upload."""
        raise NotImplementedError(f"defence {self.name!r} does not train")

    def aggregate(
        self,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float],
        generator: torch.Generator,
    ) -> tuple[Update, dict[str, float]]:
        """``aggregate`` stage: combine the round's uploads into the defended aggregate.

        ``weights`` are the clients' example counts (FedAvg's weights; a DP
        aggregate may average uniformly instead, and must say so). The result
        replaces FedAvg's weighted mean: the server applies it to the model and
        a participant observes it.
        """
        raise NotImplementedError(f"defence {self.name!r} does not aggregate")

    def state_dict(self) -> dict[str, Any]:
        """State to keep across rounds (JSON-serialisable); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned in an earlier round."""


STAGE_HOOKS: dict[str, str] = {"upload": "apply", "training": "train", "aggregate": "aggregate"}
"""The :class:`Defence` method each stage calls."""


def missing_hooks(cls: type[Defence]) -> list[str]:
    """The hooks ``cls`` must implement for its declared stages but does not."""
    return [
        STAGE_HOOKS[stage]
        for stage in cls.stages
        if getattr(cls, STAGE_HOOKS[stage]) is getattr(Defence, STAGE_HOOKS[stage])
    ]


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
    fedavg_objective: FedAvgObjective = Field(
        "delta_as_gradient",
        description="FedAvg deltas: matched as the gradient -delta/(lr*steps), or 'unrolled' "
        "(the client's local SGD steps simulated on the dummy data)",
    )

    def budget(self) -> dict[str, Any]:
        """The budget fields as :class:`MatchConfig` keyword arguments."""
        return self.model_dump(include=set(MatchingParams.model_fields) - {"fedavg_objective"})


class MatchingAttack(Attack):
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

    def knowledge_needed(self, kind: UpdateKind) -> frozenset[Knowledge]:
        return self.needs | ({"local_hyperparameters"} if kind == "delta" else set())

    @abstractmethod
    def match_config(self, observation: Observation) -> MatchConfig:
        """The engine's configuration for ``observation`` (without ``unroll``)."""

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: MatchingParams = self.params  # type: ignore[assignment]
        labels, source = observation.labels, "given by the threat model (knows_labels)"
        if labels is None and self.recovers_labels:
            labels, source = recover_labels(observation), "recovered from the head's gradient"
        elif labels is None:
            source = "optimised jointly with the images"
        result = reconstruct_by_matching(
            observation, self.match_config(observation), labels, params.fedavg_objective
        )
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


DELTA_AS_GRADIENT = "weight delta treated as gradient: -delta / (lr * steps)"


def reconstruct_by_matching(
    observation: Observation,
    config: MatchConfig,
    labels: torch.Tensor | None = None,
    fedavg_objective: FedAvgObjective = "delta_as_gradient",
) -> Reconstruction:
    """Run :func:`match_gradients` on ``observation`` and wrap the result.

    With ``labels`` (e.g. from :func:`recover_labels`) only images are optimised
    and the labels are recorded in the diagnostics as ``recovered_labels``. A
    FedAvg delta is matched as a gradient, or with ``fedavg_objective =
    "unrolled"`` through the simulated local steps (:func:`local_sgd`); the record
    says which in ``diagnostics.gradient_source``. When the observation carries
    the clients' :attr:`~Observation.training_regulariser`, the simulated gradient
    includes it (not yet in the unrolled objective, which then says so as
    ``unsupported``).
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


def reconstruct_analytically(
    observation: Observation,
    conv_solver: ConvSolver | None,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Reconstruction:
    """Run the top-down recursion (:func:`invert_chain`) on one sample's update.

    Returns ``unsupported`` (never raises) for a batch larger than one, a model
    that is not a supported chain, or clients whose loss has a term beyond
    cross-entropy (racecar training: the layer constraints assume it has none).
    The label is recovered with the iDLG rule unless the observation carries
    labels. ``postprocess`` maps the ``(1, C, H, W)`` image in [0, 1] to a new one
    (e.g. denoising).
    """
    if observation.batch_size != 1:
        return Reconstruction.unsupported(
            f"analytic attacks here reconstruct a single image; this update comes from a batch of "
            f"{observation.batch_size}"
        )
    if observation.training_regulariser is not None:
        return Reconstruction.unsupported(
            "the clients' loss has a term beyond cross-entropy (racecar training); the closed "
            "form assumes dJ/dW = (dJ/dz) x^T, which that term breaks"
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
        diagnostics["gradient_source"] = DELTA_AS_GRADIENT
    if observation.labels is not None:
        labels = observation.labels.detach().cpu().long()
        diagnostics["label_source"] = "given by the threat model (knows_labels)"
    else:
        labels = recover_labels(observation)
        diagnostics["label_source"] = "recovered (iDLG rule)"
        diagnostics["recovered_labels"] = labels.tolist()
    return Reconstruction(images.to(torch.float32), labels, diagnostics=diagnostics)
