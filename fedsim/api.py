"""The contracts of fedsim's plugin API: what an attack or a defence plugin implements and receives.

An *attack* (:class:`Attack`) receives an :class:`Observation` — exactly what an
attacker at a given position may see in one federated round — and returns a
:class:`Reconstruction`. A *defence* (:class:`Defence`) declares the :data:`Stage`
it acts at — a client's upload before it leaves the client, the client's training
itself (DP-SGD, given a :class:`LocalTraining`, returning a :class:`TrainingResult`),
the server's aggregate (central DP), or the exchange itself (secure aggregation,
described by a :class:`SecureAggregation`) — transforms what passes there and reports
what it measured. Both are generic over their validated parameters
(``class DLG(Attack[DLGParams])``, ``class Pruning(Defence[PruningParams])``), so
``self.params`` has the plugin's own type. Plugins are registered through Python
entry points (groups ``fedsim.attacks`` and ``fedsim.defences``); each entry point
names a subclass of :class:`Attack` or :class:`Defence`.

Ground truth (the client's real batch) never appears here: fedsim scores a
reconstruction after the attack has returned.

This module holds only the contracts and imports nothing else of fedsim but the
threat model (:mod:`fedsim.threat`). The building blocks a plugin may reuse live
in their own modules:

- :mod:`fedsim.inversion.matching`: :class:`~fedsim.inversion.matching.MatchingAttack`,
  :class:`~fedsim.inversion.matching.MatchingParams`,
  :func:`~fedsim.inversion.matching.reconstruct_by_matching` (gradient-matching
  attacks on an observation);
- :mod:`fedsim.inversion.gradient_matching`: the gradient-matching engine
  (:func:`~fedsim.inversion.gradient_matching.match_gradients`, ``MatchConfig``,
  distances, total variation);
- :mod:`fedsim.inversion.labels`: label recovery from the head's gradient
  (:func:`~fedsim.inversion.labels.recover_labels`, iDLG, per-class counts);
- :mod:`fedsim.inversion.analytic_attack`:
  :func:`~fedsim.inversion.analytic_attack.reconstruct_analytically` (closed-form
  layer-by-layer inversion of one sample);
- :mod:`fedsim.analytic`: the closed-form layer inversion and rank analysis itself;
- :mod:`fedsim.training.local`: :func:`~fedsim.training.local.train_locally` (a
  client's FedSGD/FedAvg training, with the objective and a gradient hook of a
  ``training``-stage defence's choosing);
- :mod:`fedsim.privacy.noise`: clipping, Gaussian noise and averaging of updates;
- :mod:`fedsim.privacy.accounting`: the Gaussian mechanism's privacy accountant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fedsim.threat import KNOWLEDGE, Knowledge, Position

__all__ = [
    "CLIENT_STAGES",
    "KNOWLEDGE",
    "STAGE_HOOKS",
    "Attack",
    "AttackParams",
    "Defence",
    "DefenceParams",
    "Knowledge",
    "LocalTraining",
    "Observation",
    "Position",
    "Reconstruction",
    "Regulariser",
    "SecureAggregation",
    "Stage",
    "Status",
    "TrainingResult",
    "Update",
    "UpdateKind",
    "missing_hooks",
]

UpdateKind = Literal["gradient", "delta"]
"""``gradient``: dL/dθ of the mean loss over the batch (FedSGD).
``delta``: θ_after − θ_before after local training (FedAvg)."""

Status = Literal["ok", "failed", "unsupported"]

Stage = Literal["upload", "training", "aggregate", "secure_aggregation"]
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
- ``secure_aggregation``: on the exchange between the clients and the server
  (SecAgg+): each client masks its upload, and the server unmasks only the
  round's sum (FedAvg's mean). An attacker at the server then sees what a
  participant sees, the aggregate, and never an individual upload. ``upload``
  and ``training`` defences still act on each client's update before it is
  masked; ``aggregate`` defences, which combine the individual uploads, cannot
  run with it.
"""

CLIENT_STAGES: tuple[Stage, ...] = ("training", "upload")
"""The stages that act on a client, before its update leaves it."""

Update = dict[str, torch.Tensor]
"""A model update keyed by parameter name (``model.named_parameters()``)."""

Regulariser = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, H, W)`` images in [0, 1] → a scalar tensor added to the mean cross-entropy
(the clients' training loss beyond it, e.g. racecar's term)."""


class AttackParams(BaseModel):
    """Base class of an attack's parameters; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DefenceParams(BaseModel):
    """Base class of a defence's parameters; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=AttackParams)
"""An attack's parameter class."""

D = TypeVar("D", bound=DefenceParams)
"""A defence's parameter class."""


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


class Attack(ABC, Generic[P]):
    """An attacker plugin. Subclasses set the class attributes and implement
    :meth:`reconstruct`; fedsim validates the scenario's parameters against
    :attr:`Params` and passes the validated instance to ``__init__``. A subclass
    names its parameter class twice: as the type argument (``Attack[DLGParams]``,
    so that :attr:`params` is typed) and as :attr:`Params` (read at run time).

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

    def __init__(self, params: P) -> None:
        self.params: P = params

    @classmethod
    def knowledge_needed(cls, kind: UpdateKind) -> frozenset[Knowledge]:
        """The flags the attack needs against an update of ``kind`` (default :attr:`needs`).

        A class-level answer: scenario validation asks it without building the attack."""
        return cls.needs

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


@dataclass(frozen=True)
class SecureAggregation:
    """The parameters of secure aggregation for rounds of a given number of clients, as
    a ``secure_aggregation``-stage defence returns them (:meth:`Defence.secure_aggregation`).

    The protocol is SecAgg+ (Bell et al., CCS 2020); with :attr:`num_shares` equal to
    the round's clients it is SecAgg (Bonawitz et al., CCS 2017). Each client shares its
    secrets (its masks' seeds) with its neighbours; the server unmasks the sum only when
    enough shares come back.

    Attributes:
        num_shares: k, the clients each client shares its secrets with, itself
            included (its neighbourhood); k equal to the round's clients is SecAgg's
            complete graph, a smaller k must be odd.
        reconstruction_threshold: t, the shares that reconstruct a secret
            (2 ≤ t < k). The server unmasks the sum only if at least t of every
            client's neighbourhood are left, so the sum holds at least t clients'
            uploads, and up to k − t of each neighbourhood may drop out.
        clipping_range: c: each coordinate of a client's weighted update (the update
            times its weight over :attr:`max_weight`) is clipped to [−c, c].
        quantization_range: T: [−c, c] is mapped onto the integers 0..T by
            stochastic rounding; the round's clients times T must stay below the
            masks' modulus (2³²), or the sum overflows.
        max_weight: the largest weight (example count) a client may report; a
            client's resolution is about 2c · max_weight / (T · its weight).
            ``None``: fedsim derives it from the data.
        timeout: seconds the server waits for each of the protocol's four
            exchanges; ``None``: the federation's ``round_timeout``.
    """

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    max_weight: float | None = None
    timeout: float | None = None


class Defence(Generic[D]):
    """A defence plugin. It declares where it acts and implements the hook of that stage.

    Like :class:`Attack` it is generic over its parameter class
    (``Defence[PruningParams]``), which it also names as :attr:`Params`.

    Attributes:
        stages: the :data:`Stage` values the defence can act at (shown by
            ``fedsim plugins``). :attr:`stage` is where *this instance* acts:
            ``stages[0]`` unless the plugin lets a parameter choose (it then
            overrides :meth:`stage_for`).
        formal_guarantee: whether the defence gives a differential-privacy
            guarantee, i.e. clips, adds calibrated noise *and* accounts for it
            (plain noise without clipping does not; pruning and quantisation
            do not).

    The hook of each stage (the others keep their default, which raises):

    - ``upload``: :meth:`apply`; ``training``: :meth:`train`;
      ``aggregate``: :meth:`aggregate`; ``secure_aggregation``:
      :meth:`secure_aggregation`.

    Measurements are plain floats keyed by name. fedsim reads these keys
    where present: ``noise_std`` (configured std of the noise per coordinate,
    in the units of what it was added to), ``measured_noise_std`` (sample std
    of the noise actually drawn), ``noise_to_update_norm`` (L2 norm of the
    noise over that of what it was added to), ``epsilon`` and ``delta`` (the
    privacy spent so far, for defences with an accountant).

    Under secure aggregation, an ``upload``-stage defence that accounts with
    fedsim's Gaussian accountant (:mod:`fedsim.privacy.accounting`) and keeps it
    as its ``accountant`` attribute (``dp_gaussian`` on the client) also reports
    ``epsilon_sum`` and ``delta_sum``: the client's ε against an observer who sees
    only the sum of at least ``reconstruction_threshold`` uploads
    (:func:`fedsim.scenario.secure_aggregation.sum_privacy`).

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

    def __init__(self, params: D) -> None:
        self.params: D = params

    @classmethod
    def stage_for(cls, params: D) -> Stage:
        """Where a defence of this class with ``params`` acts: ``stages[0]`` unless the
        class lets a parameter choose among its :attr:`stages` (it then overrides this).
        A class-level answer: scenario validation asks it without building the defence."""
        return cls.stages[0]

    @property
    def stage(self) -> Stage:
        """Where this instance acts (:meth:`stage_for` of its parameters)."""
        return self.stage_for(self.params)

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

    def secure_aggregation(self, clients: int) -> SecureAggregation:
        """``secure_aggregation`` stage: the protocol's parameters for rounds of
        ``clients`` clients.

        Raises:
            ValueError: the protocol cannot run with ``clients`` per round (the
                message says why).
        """
        raise NotImplementedError(f"defence {self.name!r} does not aggregate securely")

    def state_dict(self) -> dict[str, Any]:
        """State to keep across rounds (JSON-serialisable); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned in an earlier round."""


STAGE_HOOKS: dict[str, str] = {
    "upload": "apply",
    "training": "train",
    "aggregate": "aggregate",
    "secure_aggregation": "secure_aggregation",
}
"""The :class:`Defence` method each stage calls."""


def missing_hooks(cls: type[Defence[Any]]) -> list[str]:
    """The hooks ``cls`` must implement for its declared stages but does not."""
    return [
        STAGE_HOOKS[stage]
        for stage in cls.stages
        if getattr(cls, STAGE_HOOKS[stage]) is getattr(Defence, STAGE_HOOKS[stage])
    ]
